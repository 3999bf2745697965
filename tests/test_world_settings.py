"""World settings of the simulator: the merchant-risk knobs and the "risky" setting (training/simulate.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustfeed.features.errors import ConfigError
from trustfeed.training.simulate import RISKY, SimConfig, _p_bad, _p_cancel, simulate, write_dataset


@settings(max_examples=60, deadline=None)
@given(
    trust=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=30),
    floor=st.floats(0.0, 1.0),
    top=st.floats(0.0, 1.0),
    category=st.integers(0, 7),
)
def test_bad_rate_never_rises_with_trust_and_stays_a_probability(trust: list[float], floor: float, top: float,
                                                                 category: int) -> None:
    config = SimConfig(bad_rate_floor=floor, bad_rate_max=top)
    ordered = np.sort(np.asarray(trust))
    p = _p_bad(config, ordered, np.full(len(ordered), category))
    assert ((p >= 0.0) & (p <= 0.9)).all()
    assert (np.diff(p) <= 1e-15).all()


@pytest.mark.parametrize("kwargs", [{"bad_rate_max": 1.5}, {"bad_rate_floor": -0.01}, {"trust_alpha": 0.0},
                                    {"trust_beta": -1.0}, {"trust_alpha": float("nan")}])
def test_risk_knobs_are_validated(kwargs: dict) -> None:
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        SimConfig(**kwargs)


def test_a_config_saved_before_the_risk_knobs_loads_with_the_default_curve() -> None:
    saved = {k: v for k, v in SimConfig(seed=4, merchants=20).to_dict().items()
             if k not in ("trust_alpha", "trust_beta", "bad_rate_floor", "bad_rate_max")}
    assert SimConfig.from_dict(saved) == SimConfig(seed=4, merchants=20)


def test_risky_setting_has_more_low_trust_shops_and_steeper_risk() -> None:
    default = simulate(SimConfig(seed=5, merchants=80, days=12))
    risky = simulate(SimConfig(seed=5, merchants=80, days=12, **RISKY))

    def real_bad_rate(platform: object) -> float:
        orders = platform.truth["orders"]  # type: ignore[attr-defined]
        real = orders[~orders["is_fake"]]
        return float(real["is_bad"].mean())

    assert real_bad_rate(risky) > 1.5 * real_bad_rate(default)
    low = [float((p.truth["merchants"]["latent_trust"] < 0.35).mean()) for p in (default, risky)]
    assert low[1] > low[0]
    # the same trust costs more at a risky platform's shops, and the most at the least trusted
    trust = np.array([0.1, 0.5, 0.9])
    excess = _p_bad(SimConfig(**RISKY), trust, np.zeros(3, dtype=int)) - _p_bad(SimConfig(), trust, np.zeros(3, dtype=int))
    assert (excess > 0).all() and excess[0] > excess[1] > excess[2]


def test_the_closed_loop_world_rebuilds_a_risky_platform(tmp_path: Path) -> None:
    from trustfeed.training.world import World, WorldBase

    events = tmp_path / "events"
    platform = simulate(SimConfig(seed=3, merchants=30, days=8, **RISKY))
    write_dataset(platform, events)
    base = WorldBase.from_events(events)
    assert base.config == platform.config
    truth = platform.truth["merchants"]
    np.testing.assert_allclose(base.merchants["p_bad"] * (1.0 - _p_cancel(base.merchants["trust"])),
                               truth["p_bad"].to_numpy(), rtol=1e-12)
    world = World(base, seed=0)
    day = world.next_requests()
    outcome = world.serve(day, [{"request_id": r["request_id"], "items": r["candidates"]} for r in day.requests])
    assert outcome.metrics["requests"] == len(day.requests)
