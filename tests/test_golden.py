"""Golden files: a refactor must not change what trustfeed computes.

* A fixed bundle (``tests/golden/bundle``, trained by the real training job on the fixed tiny
  dataset ``tests/golden/events``) ranks the fixed request file ``tests/golden/requests.jsonl``
  exactly as ``trustfeed rank`` does; the output must equal ``tests/golden/responses.jsonl``
  byte for byte (scores, order, filtered candidates, the error line, the bundle id).
* The training frame of a fixed window of that dataset must match ``tests/golden/frame.json``
  (rows, feature schema and one sha256 per column: ids, labels, snapshot times, features).

When a change is *meant* to alter rankings or features (a new policy lever, a new trust signal),
regenerate the expected files deliberately in the same commit and say so in its message::

    .venv/bin/python tests/golden/regenerate.py            # responses.jsonl and frame.json
    .venv/bin/python tests/golden/regenerate.py --inputs   # also the bundle, events and requests

(``--inputs`` only when the committed inputs can no longer be read: see the script's docstring.)
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

GOLDEN = Path(__file__).resolve().parent / "golden"
REGENERATE = "regenerate with `.venv/bin/python tests/golden/regenerate.py` if the change is deliberate"


@pytest.fixture(scope="module")
def golden() -> Any:
    """``tests/golden/regenerate.py`` (the expected files are computed by the same functions)."""
    name = "trustfeed_tests_golden_regenerate"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, GOLDEN / "regenerate.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_golden_inputs_are_complete(golden: Any) -> None:
    """The fixed inputs cover the paths a response can take: ranked, filtered, refused."""
    from trustfeed.ranker.bundle import load_bundle, verify_bundle

    verify_bundle(golden.BUNDLE_DIR)
    policy = load_bundle(golden.BUNDLE_DIR).policy  # the committed bundle keeps its fitted state in policy.json
    assert policy.config.combine == "expected_value" and policy.is_fitted, "the golden policy must be fitted"
    expected = [json.loads(line) for line in golden.RESPONSES_FILE.read_text().splitlines()]
    assert len(expected) == len(golden.REQUESTS_FILE.read_text().splitlines()) >= 50
    assert any(r.get("filtered") for r in expected), "no response with a filtered candidate"
    assert any("error" in r for r in expected), "no refused request"


def test_bundle_ranks_requests_to_the_golden_responses(golden: Any, tmp_path: Path) -> None:
    out = tmp_path / "responses.jsonl"
    golden.rank_requests(golden.BUNDLE_DIR, golden.REQUESTS_FILE, out)
    actual, expected = out.read_bytes(), golden.RESPONSES_FILE.read_bytes()
    if actual != expected:
        got, want = actual.decode().splitlines(), expected.decode().splitlines()
        changed = [i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b]
        first = changed[0] if changed else min(len(got), len(want))
        pytest.fail(
            f"responses differ from tests/golden/responses.jsonl: {len(changed)} of {len(want)} lines changed"
            f" (lines {len(got)} vs {len(want)}); first at line {first + 1}:\n"
            f"  got:      {got[first][:300] if first < len(got) else '<none>'}\n"
            f"  expected: {want[first][:300] if first < len(want) else '<none>'}\n{REGENERATE}"
        )


def test_training_frame_matches_the_golden_fingerprint(golden: Any) -> None:
    actual = golden.frame_fingerprint(golden.training_frame(golden.EVENTS_DIR))
    expected = json.loads(golden.FRAME_FILE.read_text())
    differences = [key for key in ("rows", "groups", "feature_names", "categorical", "monotone") if actual[key] != expected[key]]
    columns = sorted(set(actual["columns"]) | set(expected["columns"]))
    differences += [f"column {c}" for c in columns if actual["columns"].get(c) != expected["columns"].get(c)]
    assert not differences, f"training frame differs from tests/golden/frame.json in: {', '.join(differences)}; {REGENERATE}"
