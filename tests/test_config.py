"""The config base: every config is checked, written and read back from its declared constraints."""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import pkgutil
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trustfeed.features.config import (
    Choice,
    Config,
    Constraint,
    Constraints,
    FilePath,
    Flag,
    Integer,
    Items,
    JSONMapping,
    Nested,
    Real,
    Text,
    Time,
)
from trustfeed.features.errors import ConfigError

# what a config needs that has no default, and fields whose valid values need the world
# outside (a key file on disk) or another field (a Dask scheduler only with backend="dask")
REQUIRED: dict[str, dict[str, Any]] = {"TrainJobConfig": {"events": Path("events")}}
FIXED: dict[str, dict[str, Any]] = {"TrainJobConfig": {"signing_key": None, "scheduler": None}}


def _all_configs() -> list[type[Config]]:
    for package in ("trustfeed.features", "trustfeed.ranker", "trustfeed.training", "trustfeed.serving"):
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, prefix=f"{package}."):
            if not info.name.endswith("__main__"):
                importlib.import_module(info.name)
    found: list[type[Config]] = []
    todo = list(Config.__subclasses__())
    while todo:
        kind = todo.pop()
        if kind.__module__.startswith("trustfeed."):
            found.append(kind)
        todo += kind.__subclasses__()
    return sorted(found, key=lambda k: k.__name__)


CONFIGS = _all_configs()


def test_every_component_config_derives_from_the_base() -> None:
    names = {kind.__name__ for kind in CONFIGS}
    expected = {"TrustConfig", "ContextConfig", "PolicyConfig", "BalancerConfig", "LambdaMARTConfig", "DatasetConfig",
                "EvalConfig", "DynamicsConfig", "SimConfig", "DemoConfig", "BadOrderCostConfig", "TrainJobConfig",
                "SharedLedgerConfig", "PurchaseModelConfig"}
    assert expected <= names
    for kind in CONFIGS:
        assert dataclasses.is_dataclass(kind) and kind.__dataclass_params__.frozen, kind  # type: ignore[attr-defined]
        assert set(kind.constraints) == set(kind.field_names()), f"{kind.__name__}: constraints and fields differ"
        for own in ("to_dict", "from_dict", "__post_init__"):
            assert own not in vars(kind), f"{kind.__name__} writes its own {own}: the base owns it"


# ----------------------------------------------------------------------------- strategies


def valid(constraint: Constraint) -> st.SearchStrategy[Any]:
    """Values the constraint accepts (raw, as a caller or JSON would hand them over)."""
    inner: st.SearchStrategy[Any]
    if isinstance(constraint, Real):
        inner = st.floats(
            min_value=constraint.low, max_value=constraint.high, exclude_min=constraint.strict_low and constraint.low is not None,
            exclude_max=constraint.strict_high and constraint.high is not None, allow_nan=False,
            allow_infinity=constraint.allow_inf and constraint.high is None,
        )
        if constraint.low is None or constraint.low <= 3 <= (math.inf if constraint.high is None else constraint.high):
            inner = inner | st.just(3)  # an int is a number too
    elif isinstance(constraint, Integer):
        low = -(10**6) if constraint.low is None else constraint.low
        inner = st.integers(low, low + 10**6 if constraint.high is None else constraint.high)
    elif isinstance(constraint, Flag):
        inner = st.booleans()
    elif isinstance(constraint, Choice):
        inner = st.sampled_from(constraint.options)
    elif isinstance(constraint, Text):
        inner = st.text(min_size=1, max_size=12).filter(str.strip)
    elif isinstance(constraint, Time):
        inner = st.datetimes(min_value=datetime(1700, 1, 1), max_value=datetime(2200, 1, 1)).map(datetime.isoformat)
    elif isinstance(constraint, FilePath):
        inner = st.sampled_from(["events", "/tmp/models", "a b/c"]) | st.sampled_from([Path("x"), Path("/y/z")])
    elif isinstance(constraint, Items):
        items = st.lists(valid(constraint.item), min_size=constraint.min_len, max_size=4,
                         unique=constraint.distinct or constraint.increasing)
        inner = items.map(sorted) if constraint.increasing else items
    elif isinstance(constraint, Nested):
        inner = configs(constraint.kind)
    elif isinstance(constraint, JSONMapping):
        inner = st.dictionaries(st.sampled_from(["min_gain_to_split", "extra_trees"]), st.integers(0, 3), max_size=2)
    else:  # pragma: no cover - a new kind of constraint needs a strategy here
        raise AssertionError(f"no strategy for {constraint!r}")
    return (st.none() | inner) if constraint.optional else inner


def configs(kind: type[Config]) -> st.SearchStrategy[Any]:
    """Valid configs of ``kind``: a random subset of its fields changed from the defaults."""
    name = kind.__name__
    optional = {field: valid(c) for field, c in kind.constraints.items()
                if field not in REQUIRED.get(name, {}) and field not in FIXED.get(name, {})}

    def build(changes: dict[str, Any]) -> Any:
        try:
            return kind(**REQUIRED.get(name, {}), **changes)
        except ConfigError as error:
            return error  # a combination a cross-field check refuses; filtered below

    return st.fixed_dictionaries({}, optional=optional).map(build).filter(lambda c: isinstance(c, kind))


def invalid(constraint: Constraint) -> list[Any]:
    """Values the constraint must refuse."""
    wrong_type: list[Any] = [object(), "1", [1.0]] if not isinstance(constraint, (Items, Text, Time, FilePath)) else [object()]
    bad: list[Any] = [] if constraint.optional else [None]
    if isinstance(constraint, Real):
        bad += [math.nan, True]
        bad += [] if constraint.low is None else [constraint.low - 1.0] + ([constraint.low] if constraint.strict_low else [])
        bad += [] if constraint.high is None else [constraint.high + 1.0] + ([constraint.high] if constraint.strict_high else [])
        bad += [] if constraint.allow_inf else [math.inf]
    elif isinstance(constraint, Integer):
        bad += [1.5, True] + ([] if constraint.low is None else [constraint.low - 1])
        bad += [] if constraint.high is None else [constraint.high + 1]
    elif isinstance(constraint, Flag):
        bad += [1, "true"]
    elif isinstance(constraint, Choice):
        bad += ["no-such-option"]
    elif isinstance(constraint, Text):
        bad += ["", "  ", 3]
    elif isinstance(constraint, Time):
        bad += ["not a time", "3000-01-01", 3]
    elif isinstance(constraint, FilePath):
        bad += ["", 3]
    elif isinstance(constraint, Items):
        bad += ["abc", 3] + [[v] for v in invalid(constraint.item) if v is not None][:2]
    elif isinstance(constraint, Nested):
        bad += [3, "config"]
    elif isinstance(constraint, JSONMapping):
        bad += [[1], {1: 2}]
    return bad + wrong_type


# ----------------------------------------------------------------------------- properties


@pytest.mark.parametrize("kind", CONFIGS, ids=lambda k: k.__name__)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(data=st.data())
def test_from_dict_of_to_dict_gives_the_same_config(kind: type[Config], data: st.DataObject) -> None:
    config = data.draw(configs(kind))
    written = json.loads(json.dumps(config.to_dict(), allow_nan=False))  # plain JSON: no NaN, no Infinity
    assert kind.from_dict(written) == config
    assert set(written) == set(kind.field_names())


@pytest.mark.parametrize("kind", CONFIGS, ids=lambda k: k.__name__)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_an_invalid_value_is_a_one_line_error_naming_the_field(kind: type[Config], data: st.DataObject) -> None:
    field = data.draw(st.sampled_from(sorted(kind.constraints)))
    value = data.draw(st.sampled_from(invalid(kind.constraints[field])))
    changes = {**REQUIRED.get(kind.__name__, {}), field: value}
    with pytest.raises(ConfigError) as error:
        kind(**changes)
    message = str(error.value)
    assert message.startswith(f"{kind.__name__}.{field}: expected ") and "\n" not in message
    with pytest.raises(ConfigError):
        kind.from_dict(changes if not isinstance(value, Path) else {**changes, field: str(value)})


@pytest.mark.parametrize("kind", CONFIGS, ids=lambda k: k.__name__)
@settings(max_examples=10, deadline=None)
@given(key=st.text(min_size=1, max_size=10))
def test_an_unknown_key_is_refused_by_name(kind: type[Config], key: str) -> None:
    if key in kind.constraints:
        return
    with pytest.raises(ConfigError, match="unknown keys") as error:
        kind.from_dict({**REQUIRED.get(kind.__name__, {}), key: 1})
    assert repr(key) in str(error.value)


# ----------------------------------------------------------------------------- the base itself


@dataclasses.dataclass(frozen=True)
class _Example(Config):
    low: float = 0.0
    high: float = 1.0
    decay: float = math.inf
    sizes: tuple[int, ...] = (1, 2)
    constraints: ClassVar[Constraints] = {
        "low": Real(),
        "high": Real(),
        "decay": Real(0, strict_low=True, allow_inf=True),
        "sizes": Items(Integer(low=1), increasing=True),
    }

    def check(self) -> None:
        if self.high < self.low:
            raise self.reject("high", f"a number >= low ({self.low})")


def test_values_are_normalised_and_written_as_json() -> None:
    import numpy as np

    example = _Example(low=np.float32(0.5), high=2, sizes=[np.int64(3), 4])
    assert example.low == 0.5 and type(example.low) is float and type(example.high) is float
    assert example.sizes == (3, 4) and all(type(s) is int for s in example.sizes)
    assert example.to_dict() == {"low": 0.5, "high": 2.0, "decay": "inf", "sizes": [3, 4]}
    assert _Example.from_dict(example.to_dict()) == example


def test_cross_field_checks_run_after_the_fields_and_on_replace() -> None:
    with pytest.raises(ConfigError, match=r"^_Example\.high: expected a number >= low \(2.0\), got 1.0$"):
        _Example(low=2.0)
    with pytest.raises(ConfigError, match="sizes"):
        dataclasses.replace(_Example(), sizes=(2, 2))


def test_a_field_without_a_constraint_is_a_programming_error() -> None:
    @dataclasses.dataclass(frozen=True)
    class Forgotten(Config):
        rate: float = 0.5
        constraints: ClassVar[Constraints] = {}

    with pytest.raises(TypeError, match="Forgotten.rate declares no constraint"):
        Forgotten()


def test_from_dict_needs_a_mapping() -> None:
    with pytest.raises(ConfigError, match="expected a mapping"):
        _Example.from_dict([("low", 1.0)])  # type: ignore[arg-type]
