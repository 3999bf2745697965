"""The one base of trustfeed's configuration objects: declared constraints, checked in one place.

A config is a frozen dataclass deriving from :class:`Config` that declares, next to its
fields, what each field may hold::

    @dataclass(frozen=True)
    class ExampleConfig(Config):
        rate: float = 0.5
        rounds: int = 10
        constraints: ClassVar[Constraints] = {"rate": Real(0, 1), "rounds": Integer(low=1)}

From that declaration the base

* checks every value when the object is made (a :class:`~trustfeed.features.errors.ConfigError`
  whose one line names the config, the field, what was expected and what came),
* normalises what JSON or a caller may hand over (lists become tuples, numpy scalars
  Python numbers, mappings nested configs, strings paths),
* writes the JSON-able :meth:`Config.to_dict` and reads it back with :meth:`Config.from_dict`,
  which rejects unknown keys.

Checks that involve two fields at once (``strength_min <= strength_max``) go in the
config's :meth:`Config.check` hook, which runs after every field passed its own check.
(The idea is scikit-learn's ``_param_validation``: constraints declared as data, one
validator; this is a small implementation of our own over dataclasses.)

Examples
--------
>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class ExampleConfig(Config):
...     rate: float = 0.5
...     sizes: tuple[int, ...] = (1, 2)
...     constraints: ClassVar[Constraints] = {"rate": Real(0, 1), "sizes": Items(Integer(low=1))}
>>> ExampleConfig(rate=1).to_dict()
{'rate': 1.0, 'sizes': [1, 2]}
>>> ExampleConfig.from_dict({"sizes": [3]})
ExampleConfig(rate=0.5, sizes=(3,))
>>> ExampleConfig(rate=2)
Traceback (most recent call last):
...
trustfeed.features.errors.ConfigError: ExampleConfig.rate: expected a number in [0, 1], got 2
>>> ExampleConfig.from_dict({"rat": 0.1})
Traceback (most recent call last):
...
trustfeed.features.errors.ConfigError: ExampleConfig: unknown keys ['rat']; known keys are ['rate', 'sizes']
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from .errors import ConfigError, reject_unknown_keys

__all__ = [
    "Config",
    "Constraint",
    "Constraints",
    "Real",
    "Integer",
    "Flag",
    "Choice",
    "Text",
    "Time",
    "FilePath",
    "Items",
    "Nested",
    "JSONMapping",
]

_C = TypeVar("_C", bound="Config")


class _Invalid(Exception):
    """Raised by a constraint's ``parse``; the base turns it into a ConfigError naming the field."""


class Constraint:
    """What one field may hold.

    Subclasses implement :meth:`parse` (check and normalise a value, raising on a bad one)
    and :meth:`describe` (the "expected ..." part of the message). ``optional=True`` also
    allows ``None``.
    """

    def __init__(self, *, optional: bool = False) -> None:
        self.optional = optional

    def describe(self) -> str:
        """What is expected, e.g. ``"a number in [0, 1]"``."""
        raise NotImplementedError

    def parse(self, value: Any) -> Any:
        """The normalised value; raises ``_Invalid`` when ``value`` does not fit."""
        raise NotImplementedError

    def dump(self, value: Any) -> Any:
        """The JSON-able form of a normalised value."""
        return value

    def load(self, value: Any) -> Any:
        """The inverse of :meth:`dump` (before :meth:`parse`)."""
        return value

    def expected(self) -> str:
        """:meth:`describe`, with ``or None`` for optional fields."""
        return f"{self.describe()} or None" if self.optional else self.describe()

    def check(self, value: Any) -> Any:
        """:meth:`parse` that lets ``None`` through for optional fields."""
        if value is None and self.optional:
            return None
        return self.parse(value)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _is_integer(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) and not float(value).is_integer() else str(int(value))


class Real(Constraint):
    """A real number (not a bool) in a range; stored as a Python ``float``.

    ``Real(0, 1)`` is ``[0, 1]``; ``strict_low`` / ``strict_high`` open the bounds;
    ``allow_inf`` admits ``math.inf`` (serialised as the string ``"inf"``). NaN never fits.
    """

    def __init__(
        self,
        low: float | None = None,
        high: float | None = None,
        *,
        strict_low: bool = False,
        strict_high: bool = False,
        allow_inf: bool = False,
        optional: bool = False,
    ) -> None:
        super().__init__(optional=optional)
        self.low, self.high = low, high
        self.strict_low, self.strict_high = strict_low, strict_high
        self.allow_inf = allow_inf

    def describe(self) -> str:
        kind = "a number" if self.allow_inf or self.high is not None else "a finite number"
        low, high = self.low, self.high
        if low is not None and high is not None:
            left = "(" if self.strict_low else "["
            right = ")" if self.strict_high else "]"
            return f"{kind} in {left}{_number(low)}, {_number(high)}{right}"
        if low is not None:
            return f"{kind} {'>' if self.strict_low else '>='} {_number(low)}"
        if high is not None:
            return f"{kind} {'<' if self.strict_high else '<='} {_number(high)}"
        return kind

    def parse(self, value: Any) -> float:
        if not _is_real(value) or math.isnan(value) or (math.isinf(value) and not self.allow_inf):
            raise _Invalid
        number = float(value)
        if self.low is not None and (number < self.low or (self.strict_low and number == self.low)):
            raise _Invalid
        if self.high is not None and (number > self.high or (self.strict_high and number == self.high)):
            raise _Invalid
        return number

    def dump(self, value: Any) -> Any:
        return "inf" if isinstance(value, float) and math.isinf(value) and value > 0 else value

    def load(self, value: Any) -> Any:
        return math.inf if self.allow_inf and value == "inf" else value


class Integer(Constraint):
    """A whole number (an ``int`` or numpy integer, not a bool) in ``[low, high]``."""

    def __init__(self, low: int | None = None, high: int | None = None, *, optional: bool = False) -> None:
        super().__init__(optional=optional)
        self.low, self.high = low, high

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            return f"an integer in [{self.low}, {self.high}]"
        if self.low is not None:
            return f"an integer >= {self.low}"
        if self.high is not None:
            return f"an integer <= {self.high}"
        return "an integer"

    def parse(self, value: Any) -> int:
        if not _is_integer(value):
            raise _Invalid
        number = int(value)
        if (self.low is not None and number < self.low) or (self.high is not None and number > self.high):
            raise _Invalid
        return number


class Flag(Constraint):
    """``True`` or ``False`` (not 0/1, not a string)."""

    def describe(self) -> str:
        return "true or false"

    def parse(self, value: Any) -> bool:
        if not isinstance(value, (bool, np.bool_)):
            raise _Invalid
        return bool(value)


class Choice(Constraint):
    """One of a fixed set of values."""

    def __init__(self, *options: Any, optional: bool = False) -> None:
        super().__init__(optional=optional)
        self.options = tuple(options)

    def describe(self) -> str:
        return f"one of {', '.join(repr(o) for o in self.options)}"

    def parse(self, value: Any) -> Any:
        if isinstance(value, bool) or value not in self.options:
            raise _Invalid
        return value


class Text(Constraint):
    """A non-empty string (not only blanks)."""

    def describe(self) -> str:
        return "a non-empty string"

    def parse(self, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise _Invalid
        return value


class Time(Constraint):
    """A point in time as text (ISO 8601, naive means UTC), kept as given; read with ``to_utc``."""

    def describe(self) -> str:
        return "a date or ISO 8601 time"

    def parse(self, value: Any) -> str:
        from .events import to_utc

        if not isinstance(value, str):
            raise _Invalid
        try:
            to_utc(value)
        except ConfigError:
            raise _Invalid from None
        return value


class FilePath(Constraint):
    """A file-system path (a string or ``Path``), kept as a ``Path``; written as a string."""

    def describe(self) -> str:
        return "a path"

    def parse(self, value: Any) -> Path:
        if not isinstance(value, (str, Path)) or not str(value):
            raise _Invalid
        return Path(value)

    def dump(self, value: Any) -> Any:
        return None if value is None else str(value)


class Items(Constraint):
    """A sequence whose items each fit ``item``; stored as a tuple, written as a list.

    ``min_len`` bounds its length; ``distinct`` forbids repeats and ``increasing`` asks for
    strictly increasing items.
    """

    def __init__(
        self,
        item: Constraint,
        *,
        min_len: int = 0,
        distinct: bool = False,
        increasing: bool = False,
        optional: bool = False,
    ) -> None:
        super().__init__(optional=optional)
        self.item = item
        self.min_len, self.distinct, self.increasing = min_len, distinct, increasing

    def describe(self) -> str:
        qualities = ("strictly increasing " if self.increasing else "") + ("distinct " if self.distinct else "")
        size = "a non-empty list" if self.min_len == 1 else (f"a list of at least {self.min_len}" if self.min_len else "a list")
        return f"{size} of {qualities}items, each {self.item.describe()}"

    def parse(self, value: Any) -> tuple[Any, ...]:
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple, np.ndarray)):
            raise _Invalid
        items = tuple(self.item.parse(v) for v in value)
        if len(items) < self.min_len:
            raise _Invalid
        if self.distinct and len(set(items)) != len(items):
            raise _Invalid
        if self.increasing and any(b <= a for a, b in zip(items, items[1:])):
            raise _Invalid
        return items

    def dump(self, value: Any) -> Any:
        return None if value is None else [self.item.dump(v) for v in value]

    def load(self, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [self.item.load(v) for v in value]
        return value


class Nested(Constraint):
    """Another config: an instance, or a mapping read with its ``from_dict``."""

    def __init__(self, kind: type[Config], *, optional: bool = False) -> None:
        super().__init__(optional=optional)
        self.kind = kind

    def describe(self) -> str:
        return f"a {self.kind.__name__} (or its dict)"

    def parse(self, value: Any) -> Config:
        if isinstance(value, self.kind):
            return value
        if isinstance(value, Mapping):
            return self.kind.from_dict(value)  # its own errors name its own fields
        raise _Invalid

    def dump(self, value: Any) -> Any:
        return None if value is None else value.to_dict()


class JSONMapping(Constraint):
    """A mapping with string keys (passed through to a library), stored as a ``dict``."""

    def describe(self) -> str:
        return "a mapping with string keys"

    def parse(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise _Invalid
        return dict(value)

    def dump(self, value: Any) -> Any:
        return dict(value)


Constraints = Mapping[str, Constraint]
"""The declaration of a config: field name -> :class:`Constraint`."""


class Config:
    """Base of every trustfeed config (a frozen dataclass declaring ``constraints``).

    Subclasses are decorated with ``@dataclass(frozen=True)`` and set the class variable
    ``constraints`` (one :class:`Constraint` per field; a field without one is a
    ``TypeError`` when the first object is made, a programming error). Checks across fields
    go in :meth:`check`.
    """

    constraints: ClassVar[Constraints] = {}

    def __post_init__(self) -> None:
        name = type(self).__name__
        for spec in dataclasses.fields(self):  # type: ignore[arg-type]
            constraint = self.constraints.get(spec.name)
            if constraint is None:
                raise TypeError(f"{name}.{spec.name} declares no constraint; add it to {name}.constraints")
            value = getattr(self, spec.name)
            try:
                parsed = constraint.check(value)
            except _Invalid:
                raise ConfigError(f"{name}.{spec.name}: expected {constraint.expected()}, got {_clip(value)}") from None
            object.__setattr__(self, spec.name, parsed)
        self.check()

    def check(self) -> None:
        """Checks across fields (after each field passed its own); raise with :meth:`reject`."""

    def reject(self, field: str, expected: str) -> ConfigError:
        """The one-line error for ``field`` (for :meth:`check`): raise what this returns."""
        return ConfigError(f"{type(self).__name__}.{field}: expected {expected}, got {_clip(getattr(self, field))}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: nested configs become dicts, tuples lists, paths strings, inf ``"inf"``."""
        return {spec.name: self.constraints[spec.name].dump(getattr(self, spec.name))
                for spec in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[_C], values: Mapping[str, Any]) -> _C:
        """Inverse of :meth:`to_dict`; unknown keys are a :class:`~trustfeed.features.errors.ConfigError`."""
        if not isinstance(values, Mapping):
            raise ConfigError(f"{cls.__name__}: expected a mapping of settings, got {_clip(values)}")
        known = {spec.name for spec in dataclasses.fields(cls)}  # type: ignore[arg-type]
        reject_unknown_keys(cls.__name__, values, known)
        loaded = {key: cls.constraints[key].load(value) if key in cls.constraints else value
                  for key, value in values.items()}
        return cls(**loaded)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The settings, in declaration order."""
        return tuple(spec.name for spec in dataclasses.fields(cls))  # type: ignore[arg-type]


def _clip(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
