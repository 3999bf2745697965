#!/usr/bin/env bash
# Build the wheel, install it into a fresh venv and import every trustfeed module from a
# directory outside the repository: a sub-package missing from pyproject's `packages`
# disappears only from the wheel, so only this catches it. Also checks that the root
# folders do not leak as top-level packages (`import features` must fail).
set -euo pipefail
builder_python="$1"
repo="$(pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$builder_python" -m build --wheel --outdir "$work/dist" "$repo" >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
python_bin="$(command -v python3.11 || command -v python3)"
"$python_bin" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q "$work"/dist/trustfeed-*.whl
cd "$work"
"$work/venv/bin/python" - "$repo" <<'PY'
import importlib, pathlib, sys
repo = pathlib.Path(sys.argv[1])
modules = []
for folder in ("features", "ranker", "training", "serving"):
    for path in sorted((repo / folder).rglob("*.py")):
        rel = path.relative_to(repo / folder).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        modules.append(".".join(["trustfeed", folder, *parts]))
failed = []
for name in modules:
    try:
        module = importlib.import_module(name)
    except Exception as error:  # report every failure, not just the first
        failed.append(f"{name}: {error!r}")
        continue
    if str(repo) in str(getattr(module, "__file__", "")):
        failed.append(f"{name} was imported from the source tree, not the wheel")
for leaked in ("features", "ranker", "training", "serving"):
    try:
        importlib.import_module(leaked)
    except ModuleNotFoundError:
        pass
    else:
        failed.append(f"'import {leaked}' works: a root folder leaked as a top-level package")
if failed:
    print("wheel check failed:\n  " + "\n  ".join(failed))
    sys.exit(1)
print(f"wheel check: {len(modules)} modules import from the installed wheel")
PY
"$work/venv/bin/trustfeed" --help >/dev/null
