"""Regenerate the golden files of ``tests/test_golden.py`` (run deliberately, never from a test).

The golden test proves that a refactor leaves behaviour unchanged: a fixed bundle ranks a fixed
request file to byte-identical responses, and the training frame of a fixed tiny dataset is
identical column by column. When a change is *meant* to alter behaviour (a new policy lever, a
new trust signal, a new feature), regenerate the expected outputs in the same commit and say so
in its message::

    .venv/bin/python tests/golden/regenerate.py            # responses.jsonl and frame.json only
    .venv/bin/python tests/golden/regenerate.py --inputs   # also events/, bundle/, requests.jsonl

The default keeps the inputs (``events/``, ``bundle/``, ``requests.jsonl``) and rewrites only the
expected outputs from them. ``--inputs`` rebuilds the inputs too: the tiny dataset is simulated
again and a bundle is trained on it with the real training job (local MLflow store in a
temporary directory); use it only when the committed inputs can no longer be read (a new bundle
format version, a changed event schema).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
EVENTS_DIR = HERE / "events"
BUNDLE_DIR = HERE / "bundle"
REQUESTS_FILE = HERE / "requests.jsonl"
RESPONSES_FILE = HERE / "responses.jsonl"
FRAME_FILE = HERE / "frame.json"

# the fixed tiny world: small enough to commit, large enough for a fitted expected-value policy
PLATFORM = {"seed": 29, "merchants": 40, "days": 21}
MODEL = {"num_rounds": 20, "early_stopping_rounds": 0, "min_data_in_leaf": 20, "num_leaves": 15}
# the training frame checked: the last days of the log, a snapshot every other day
FRAME_START = "2026-01-16"
FRAME_SNAPSHOT_EVERY_DAYS = 2
MAX_REQUESTS = 80


# --------------------------------------------------------------------------- expected outputs


def rank_requests(bundle: Path, requests: Path, out: Path) -> str:
    """Rank ``requests`` with ``bundle`` exactly as ``trustfeed rank`` does."""
    from trustfeed.serving import FeedRanker, rank_file

    ranker = FeedRanker.load(str(bundle))
    return rank_file(str(bundle), requests, out, ranker=ranker)


def training_frame(events_dir: Path) -> Any:
    """The training frame of the fixed window of the golden dataset."""
    from trustfeed.features.events import load_events
    from trustfeed.training.dataset import DatasetConfig, build_training_frame

    events = load_events(events_dir)
    config = DatasetConfig(snapshot_every_days=FRAME_SNAPSHOT_EVERY_DAYS)
    return build_training_frame(events, start=FRAME_START, config=config)


def _column_bytes(column: pd.Series) -> bytes:
    """A canonical byte form of a column: float64 bits, int64 nanoseconds or UTF-8 text."""
    if isinstance(column.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(column):
        return column.dt.tz_convert("UTC").dt.as_unit("ns").astype("int64").to_numpy().tobytes()
    if pd.api.types.is_bool_dtype(column) or pd.api.types.is_numeric_dtype(column):
        return column.to_numpy(dtype=np.float64, na_value=np.nan).tobytes()
    return "\x1f".join("\x00" if pd.isna(v) else str(v) for v in column.tolist()).encode("utf-8")


def frame_fingerprint(data: Any) -> dict[str, Any]:
    """Rows, schema and one sha256 per column of a :class:`TrainingFrame` (JSON-able)."""
    frame = data.frame
    return {
        "rows": len(frame),
        "groups": int(data.groups().size),
        "feature_names": list(data.feature_names),
        "categorical": list(data.categorical),
        "monotone": list(data.monotone),
        "columns": {
            name: {"dtype": str(frame[name].dtype), "sha256": hashlib.sha256(_column_bytes(frame[name])).hexdigest()}
            for name in frame.columns
        },
    }


def write_outputs() -> None:
    print(rank_requests(BUNDLE_DIR, REQUESTS_FILE, RESPONSES_FILE))
    fingerprint = frame_fingerprint(training_frame(EVENTS_DIR))
    FRAME_FILE.write_text(json.dumps(fingerprint, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"training frame: {fingerprint['rows']} rows, {len(fingerprint['columns'])} columns -> {FRAME_FILE}")


# --------------------------------------------------------------------------- inputs


def _requests(events_dir: Path, holdout_from: pd.Timestamp, banned: list[str]) -> list[dict[str, Any]]:
    """Logged held-out requests, plus the edge cases a response must keep stable."""
    from trustfeed.features.events import load_events

    impressions = load_events(events_dir)["impressions"]
    held = impressions.loc[(impressions["ts"] >= holdout_from).to_numpy(dtype=bool)]
    held = held.sort_values(["ts", "request_id", "position"], kind="stable")
    ids = pd.unique(held["request_id"])[:MAX_REQUESTS]
    held = held.loc[held["request_id"].isin(ids)]
    requests = []
    for request_id, rows in held.groupby("request_id", sort=False, observed=True):
        requests.append({
            "request_id": str(request_id),
            "user_id": str(rows["user_id"].iloc[0]),
            "ts": rows["ts"].iloc[0].isoformat(),
            "k": 10,
            "candidates": rows[["stream_id", "creator_id", "merchant_id"]].astype(str).to_dict(orient="records"),
        })
    base = requests[0]
    unknown = {**base, "request_id": "golden-unknown-ids", "user_id": "golden-new-user",
               "candidates": [*base["candidates"][:3],
                              {"stream_id": "s-new", "creator_id": "c-new", "merchant_id": "m-new"}]}
    no_k = {key: value for key, value in base.items() if key != "k"} | {"request_id": "golden-no-k"}
    single = {**base, "request_id": "golden-one-candidate", "candidates": base["candidates"][:1]}
    edge_cases = [unknown, no_k, single]
    if banned:
        edge_cases.append({**base, "request_id": "golden-banned-merchant", "candidates": [
            *base["candidates"][:3],
            {"stream_id": "s-banned", "creator_id": base["candidates"][0]["creator_id"], "merchant_id": banned[0]},
        ]})
    return [*requests, *edge_cases]


def write_inputs() -> None:
    from trustfeed.ranker.lambdamart import LambdaMARTConfig
    from trustfeed.training.evaluation import EvalConfig
    from trustfeed.training.simulate import SimConfig, simulate, write_dataset
    from trustfeed.training.train import TrainJobConfig, train

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dataset = root / "events"
        write_dataset(simulate(SimConfig(**PLATFORM)), dataset)
        config = TrainJobConfig(
            events=dataset,
            experiment="golden",
            tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
            output_dir=root / "models",
            model=LambdaMARTConfig(**MODEL),
            train_plain=False,
            evaluation=EvalConfig(sweep_strengths=(0.0,)),
        )
        result = train(config)
        from trustfeed.ranker.bundle import load_bundle

        if not load_bundle(result.bundle_dir).policy.is_fitted:
            sys.exit("the golden bundle's policy was not fitted (too few purchases): enlarge PLATFORM")
        for target in (EVENTS_DIR, BUNDLE_DIR):
            shutil.rmtree(target, ignore_errors=True)
        EVENTS_DIR.mkdir()
        for table in sorted(dataset.glob("*.parquet")):
            shutil.copyfile(table, EVENTS_DIR / table.name)
        shutil.copytree(result.bundle_dir, BUNDLE_DIR)
        from trustfeed.features.events import load_events

        impressions = load_events(EVENTS_DIR)["impressions"]
        span = impressions["ts"].max() - impressions["ts"].min()
        holdout_from = (impressions["ts"].min() + span * (1 - config.evaluation.holdout_fraction)).floor("D")
        merchants = pd.read_parquet(BUNDLE_DIR / "snapshot" / "merchants.parquet")
        banned = sorted(merchants.loc[merchants["banned"].astype(bool), "merchant_id"].astype(str))
        lines = [json.dumps(r, sort_keys=True) for r in _requests(EVENTS_DIR, holdout_from, banned)]
        lines.append('{"request_id": "golden-bad", "user_id": "u", "candidates": "not a list"}')
        REQUESTS_FILE.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"inputs: {EVENTS_DIR}, {BUNDLE_DIR}, {REQUESTS_FILE}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", action="store_true", help="also rebuild events/, bundle/ and requests.jsonl")
    args = parser.parse_args(argv)
    if args.inputs:
        write_inputs()
    write_outputs()
    return 0


if __name__ == "__main__":
    sys.exit(main())
