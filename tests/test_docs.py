"""The documentation describes the code as it is and stands on its own.

DESIGN.md quotes defaults of the configs; these tests read the quoted numbers back from the text and
compare them with the dataclass defaults, so a changed default without a changed doc fails. The
docs and docstrings cite the project's own contract page (docs/contract.md), never files the
project does not ship.
"""

from __future__ import annotations

import re
from pathlib import Path

from trustfeed.features.trust import TrustConfig
from trustfeed.training.dataset import DatasetConfig
from trustfeed.training.simulate import SimConfig

ROOT = Path(__file__).resolve().parents[1]
DESIGN = (ROOT / "docs" / "DESIGN.md").read_text(encoding="utf-8")


def _quoted(pattern: str) -> str:
    match = re.search(pattern, DESIGN)
    assert match is not None, f"DESIGN.md no longer quotes {pattern!r}"
    return match.group(1)


def test_design_quotes_the_trust_defaults() -> None:
    defaults = TrustConfig()
    windows = tuple(int(w) for w in _quoted(r"class TrustConfig: windows=\(([0-9, ]+)\)").split(","))
    assert windows == tuple(defaults.windows)
    assert float(_quoted(r"half_life_days=([0-9.]+)")) == defaults.half_life_days


def test_design_quotes_the_simulator_defaults() -> None:
    defaults = SimConfig()
    assert int(_quoted(r"class SimConfig: seed=0, merchants=([0-9]+)")) == defaults.merchants
    assert int(_quoted(r"class SimConfig: seed=0, merchants=[0-9]+, days=([0-9]+)")) == defaults.days


def test_design_states_the_snapshot_cadence_of_the_training_frame() -> None:
    cadence = _quoted(r"\((\w+) by default\) snapshot time")
    expected = {1: "daily", 7: "weekly"}.get(DatasetConfig().snapshot_every_days)
    assert cadence == expected


def test_docs_cite_only_files_the_project_ships() -> None:
    offenders = []
    for folder in ("features", "ranker", "training", "serving", "docs", "examples"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in {".py", ".md"} and path.is_file():
                text = path.read_text(encoding="utf-8")
                if re.search(r"CONTRACT|STYLE\.md|\.\./shared", text):
                    offenders.append(str(path.relative_to(ROOT)))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    if re.search(r"CONTRACT|STYLE\.md|\.\./shared", readme):
        offenders.append("README.md")
    assert offenders == []
    assert (ROOT / "docs" / "contract.md").is_file()
    for link in re.findall(r"\]\(([a-z_]+\.md)\)", (ROOT / "docs" / "contract.md").read_text(encoding="utf-8")):
        assert (ROOT / "docs" / link).is_file(), link
