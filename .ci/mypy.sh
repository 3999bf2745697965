#!/usr/bin/env bash
# Type-check the package with mypy (STYLE.md: disallow_untyped_defs on the package).
# Usage, from the repository root: bash .ci/mypy.sh /path/to/python
# The python must have mypy and pandas-stubs installed.
#
# The sources live in root folders (features/, ranker/, ...) mapped to trustfeed.* by
# package-dir, and an editable install with a path mapping is invisible to mypy. So the
# check runs on a throw-away root where trustfeed/<folder> are symlinks to the repo's
# folders: the modules get their real trustfeed.* names and relative imports resolve.
set -euo pipefail
# absolute, because the check runs from a temporary directory
python_bin="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
repo="$(pwd)"
test -f "$repo/pyproject.toml" || { echo "mypy.sh: run from the repository root" >&2; exit 2; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir "$work/trustfeed"
for folder in features ranker training serving; do
    ln -s "$repo/$folder" "$work/trustfeed/$folder"
done
cd "$work"
# mypy exits 1 when it reports errors (2 on a usage error or crash); set -e passes either on.
"$python_bin" -m mypy --config-file "$repo/pyproject.toml" --cache-dir "$work/.mypy_cache" \
    --namespace-packages --explicit-package-bases -p trustfeed
