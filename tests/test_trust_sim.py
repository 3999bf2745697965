"""Trust snapshot on the project simulator (hidden truth known) and through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from trustfeed.features.events import load_events, validate_events
from trustfeed.features.trust import DIMENSIONS, TrustSnapshot, build_snapshot
from trustfeed.training.cli import main


def _end(events) -> pd.Timestamp:
    return events.span()[1].normalize() + pd.Timedelta(days=1)


def _scored(snapshot: TrustSnapshot, truth: dict[str, pd.DataFrame]) -> pd.DataFrame:
    merchants = snapshot.merchants.merge(truth["merchants"], on="merchant_id", how="inner")
    merchants["percentile"] = merchants["trust_index"].rank(pct=True)
    return merchants


def test_small_platform_targets(small_platform):
    events = validate_events(small_platform.tables)
    snapshot = build_snapshot(events, _end(events))
    merchants = _scored(snapshot, small_platform.truth)
    busy = merchants[merchants["n_orders_raw"] >= 20]
    rho = stats.spearmanr(busy["trust_index"], busy["latent_trust"])[0]
    naive = stats.spearmanr(busy["mean_rating_raw"], busy["latent_trust"], nan_policy="omit")[0]
    assert rho >= 0.75 and rho > naive + 0.2
    assert merchants.loc[merchants["is_brusher"], "percentile"].mean() <= 0.3
    assert merchants.loc[merchants["is_reregistered"], "percentile"].mean() <= 0.1
    assert merchants.loc[merchants["is_reregistered"], "banned"].all()


@pytest.mark.slow
def test_larger_platform_meets_the_issue_targets():
    from trustfeed.training.simulate import SimConfig, simulate

    platform = simulate(SimConfig(seed=4, merchants=300, days=60))
    events = validate_events(platform.tables)
    snapshot = build_snapshot(events, _end(events))
    merchants = _scored(snapshot, platform.truth)
    busy = merchants[merchants["n_orders_raw"] >= 20]
    assert stats.spearmanr(busy["trust_index"], busy["latent_trust"])[0] >= 0.85
    assert merchants.loc[merchants["is_brusher"], "percentile"].mean() <= 0.3
    assert merchants.loc[merchants["is_reregistered"], "percentile"].mean() <= 0.1
    # the fitted dimension scores each carry signal about true trust
    for dimension in ("commodity_quality", "service_quality", "product_experience"):
        assert stats.spearmanr(busy[f"trust_{dimension}"], busy["latent_trust"])[0] > 0.5


def test_cli_features_writes_the_snapshot(small_events_dir, tmp_path, capsys):
    events = load_events(small_events_dir)
    as_of = (_end(events) - pd.Timedelta(days=5)).strftime("%Y-%m-%d")
    out = tmp_path / "snapshot"
    assert main(["features", "--events", str(small_events_dir), "--as-of", as_of, "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["as_of"].startswith(as_of) and manifest["format_version"] == 1
    snapshot = TrustSnapshot.load(out)
    assert manifest["row_counts"]["merchants"] == len(snapshot.merchants) > 0
    assert {f"trust_{d}" for d in DIMENSIONS} <= set(snapshot.merchants.columns)
    # the CLI and the library give the same snapshot
    direct = build_snapshot(events, as_of)
    pd.testing.assert_frame_equal(snapshot.merchants, direct.merchants)
    assert (snapshot.merchants["trust_index"].to_numpy() == direct.merchants["trust_index"].to_numpy()).all()


def test_cli_features_bad_date_is_a_one_line_error(small_events_dir, tmp_path, capsys):
    status = main(["features", "--events", str(small_events_dir), "--as-of", "not-a-date", "--out", str(tmp_path / "x")])
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("trustfeed features: error:") and "\n" not in err
    assert not (tmp_path / "x").exists()


def test_cli_features_dask_backend(small_events_dir, tmp_path):
    events = load_events(small_events_dir)
    as_of = _end(events).strftime("%Y-%m-%d")
    assert main(["features", "--events", str(small_events_dir), "--as-of", as_of, "--out", str(tmp_path / "d"), "--backend", "dask"]) == 0
    with_dask = TrustSnapshot.load(tmp_path / "d")
    assert with_dask.manifest["backend"] == "dask"
    assert len(with_dask.merchants) == len(events["merchants"][events["merchants"]["registered_at"] < pd.Timestamp(as_of, tz="UTC")])
    assert np.isfinite(with_dask.creators["trust_host"]).all()
