"""Event logs: load, validate and write the input tables of docs/contract.md section 1.

Every command that reads events goes through :func:`load_events` (or
:func:`validate_events` for frames already in memory), so a dataset is checked the same
way everywhere. Validated frames have one fixed set of dtypes:

========  =================================================================
ids/text  ``string`` (pyarrow-backed, nulls are ``pd.NA``)
times     ``datetime64[ns, UTC]`` (naive timestamps are taken as UTC)
numbers   ``float64`` (``amount``, ``followers``, ``watch_seconds``)
integers  ``int64`` when required, nullable ``Int64`` when optional
booleans  nullable ``boolean``
enums     ``category`` with the schema's fixed category list
========  =================================================================

Every problem raises one :class:`~trustfeed.features.errors.SchemaError` naming the table,
the column, what was expected, what came and up to five offending rows. References to
unknown ids (an order of a merchant not in ``merchants``) are only warnings: logs are
often cut out of larger systems.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from datetime import date
from typing import Any, TypeAlias

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ._schema import TABLE_SPECS, ColumnSpec, TableSpec
from .errors import ConfigError, SchemaError
from .io import atomic_dir

__all__ = [
    "TABLES",
    "REQUIRED_TABLES",
    "EventLog",
    "load_events",
    "validate_events",
    "validate_table",
    "write_events",
    "empty_table",
    "table_dtypes",
    "to_utc",
]

TABLES: Mapping[str, TableSpec] = TABLE_SPECS
"""Every table of the schema, by name (see :mod:`trustfeed.features._schema`)."""

REQUIRED_TABLES: tuple[str, ...] = tuple(name for name, spec in TABLES.items() if spec.required)

ID_DTYPE = pd.StringDtype("pyarrow")
TIME_DTYPE = pd.DatetimeTZDtype("ns", "UTC")

_TRUE_WORDS = ("true", "t", "yes", "y", "1", "1.0")
_FALSE_WORDS = ("false", "f", "no", "n", "0", "0.0")
_SAMPLE_ROWS = 5
_NOT_TIME = "numbers, not timestamps (use ISO 8601 text or Parquet timestamps)"


# --------------------------------------------------------------------------- dtypes


def _dtype_of(column: ColumnSpec) -> Any:
    if column.kind in ("id", "text"):
        return ID_DTYPE
    if column.kind == "time":
        return TIME_DTYPE
    if column.kind == "float":
        return np.dtype("float64")
    if column.kind == "int":
        return np.dtype("int64") if column.required else pd.Int64Dtype()
    if column.kind == "bool":
        return pd.BooleanDtype()
    return pd.CategoricalDtype(list(column.categories))


def table_dtypes(name: str) -> dict[str, Any]:
    """The validated dtype of every declared column of table ``name``.

    Examples
    --------
    >>> str(table_dtypes("orders")["created_at"])
    'datetime64[ns, UTC]'
    """
    return {column.name: _dtype_of(column) for column in _spec(name).columns}


def empty_table(name: str) -> pd.DataFrame:
    """A zero-row frame with the declared columns and dtypes of table ``name``.

    Examples
    --------
    >>> list(empty_table("follows").columns)
    ['user_id', 'creator_id', 'followed_at']
    """
    return pd.DataFrame(
        {column: pd.Series([], dtype=dtype) for column, dtype in table_dtypes(name).items()}
    )


def _spec(name: str) -> TableSpec:
    try:
        return TABLES[name]
    except KeyError:
        raise SchemaError(name, None, "one of the tables " + ", ".join(TABLES), "an unknown table name") from None


TimeLike: TypeAlias = "str | date | np.datetime64"
"""What trustfeed reads as a point in time (a ``pd.Timestamp`` is a ``date`` too); see :func:`to_utc`."""


def to_utc(t: Any) -> pd.Timestamp:
    """Parse a point in time to a UTC ``pd.Timestamp`` (nanoseconds); naive times are taken as UTC.

    The one time parser of trustfeed: cuts, windows, configs and ranking requests all read
    times through it. Raises :class:`~trustfeed.features.errors.ConfigError` if ``t`` is not
    a time (or is outside the nanosecond range, years 1677-2262).

    Examples
    --------
    >>> to_utc("2026-03-01")
    Timestamp('2026-03-01 00:00:00+0000', tz='UTC')
    >>> to_utc("2026-03-01T08:00:00+08:00")
    Timestamp('2026-03-01 00:00:00+0000', tz='UTC')
    """
    try:
        stamp = pd.Timestamp(t)
        if stamp is pd.NaT or pd.isna(stamp):
            raise ValueError("not a time")
        # nanosecond resolution is what every table and feature uses: it bounds the years
        stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
        return stamp if stamp.unit == "ns" else stamp.as_unit("ns")
    except (pd.errors.OutOfBoundsDatetime, OverflowError):
        raise ConfigError(f"expected a UTC time between {TIME_RANGE}, got {_clip_repr(t)}") from None
    except (TypeError, ValueError) as error:
        detail = " ".join(str(error).split())[:200]
        raise ConfigError(f"expected a UTC time (ISO 8601), got {_clip_repr(t)}: {detail}") from None


TIME_RANGE = f"{pd.Timestamp.min.ceil('s').isoformat()} and {pd.Timestamp.max.floor('s').isoformat()}"
"""The times trustfeed can represent (nanoseconds since 1970 in 64 bits)."""


def _clip_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- EventLog


@dataclass(frozen=True)
class EventLog:
    """A validated dataset: every table of the schema, ready for feature building.

    Build one with :func:`load_events` or :func:`validate_events`, not directly.

    Attributes
    ----------
    tables
        Every table of :data:`TABLES`, in schema order. A missing optional table is an
        empty frame with the declared columns and dtypes (and is listed in ``missing``).
    missing
        Optional tables that were absent from the dataset ("no such signal").
    warnings
        Non-fatal findings, one line each (unknown references, absent optional columns, ...).
    missing_columns
        Per present table, the optional columns that were absent from the input; they are
        filled with nulls, and this tells "not recorded" apart from "recorded as null".

    Examples
    --------
    >>> import pandas as pd
    >>> events = validate_events({
    ...     "merchants": pd.DataFrame({"merchant_id": ["m1"], "registered_at": ["2026-01-01"]}),
    ...     "orders": pd.DataFrame({"order_id": ["o1", "o2"], "user_id": ["u1", "u2"],
    ...                             "merchant_id": ["m1", "m1"], "amount": [10.0, 5.5],
    ...                             "created_at": ["2026-01-02", "2026-01-05"]}),
    ... })
    >>> len(events["orders"]), len(events.before("2026-01-03")["orders"])
    (2, 1)
    >>> "reviews" in events.missing
    True
    """

    tables: Mapping[str, pd.DataFrame]
    missing: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    missing_columns: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        absent = [name for name in TABLES if name not in self.tables]
        if absent:
            raise SchemaError(absent[0], None, "every schema table in EventLog.tables", "no such entry")
        unknown = [name for name in self.missing if name not in TABLES]
        if unknown:
            raise SchemaError(unknown[0], None, "a schema table name in EventLog.missing", "an unknown name")
        ordered = {name: self.tables[name] for name in TABLES}
        object.__setattr__(self, "tables", MappingProxyType(ordered))
        object.__setattr__(self, "missing", tuple(self.missing))
        object.__setattr__(self, "warnings", tuple(self.warnings))
        object.__setattr__(self, "missing_columns", MappingProxyType(dict(self.missing_columns)))

    def __getitem__(self, name: str) -> pd.DataFrame:
        if name not in self.tables:
            raise KeyError(f"no table {name!r}; tables are: {', '.join(TABLES)}")
        return self.tables[name]

    def has(self, name: str) -> bool:
        """Whether table ``name`` was present in the dataset (it may still have no rows)."""
        _spec(name)
        return name not in self.missing

    def before(self, t: TimeLike) -> EventLog:
        """The dataset as it was known just before time ``t`` (the point-in-time cut).

        Keeps the rows whose event time (``created_at``, ``opened_at``, ``enrolled_at``, ...)
        is strictly before ``t``. Columns only known later (``resolved_at`` and ``outcome``,
        ``shipped_at``, ``delivered_at``, ``left_at``, ``ended_at``) are set to null where the
        time that reveals them is null or not strictly before ``t``.

        Parameters
        ----------
        t
            A time (string, ``datetime``, ``pd.Timestamp``); naive times are UTC.

        Returns
        -------
        EventLog
            A new log with the same ``missing``, ``warnings`` and ``missing_columns``.

        Examples
        --------
        >>> import pandas as pd
        >>> events = validate_events({
        ...     "merchants": pd.DataFrame({"merchant_id": ["m1"], "registered_at": ["2026-01-01"]}),
        ...     "orders": pd.DataFrame({"order_id": ["o1"], "user_id": ["u1"], "merchant_id": ["m1"],
        ...                             "created_at": ["2026-01-02"], "amount": [3.0],
        ...                             "shipped_at": ["2026-01-04"]}),
        ... })
        >>> events.before("2026-01-03")["orders"]["shipped_at"].isna().tolist()
        [True]
        >>> events.before("2026-01-05")["orders"]["shipped_at"].isna().tolist()
        [False]
        """
        cut_time = to_utc(t)
        cut: dict[str, pd.DataFrame] = {}
        for name, spec in TABLES.items():
            frame = self.tables[name]
            known = (frame[spec.event_time] < cut_time).to_numpy(dtype=bool, na_value=False)
            n_known = int(np.count_nonzero(known))
            if n_known == len(frame) and frame.index.equals(pd.RangeIndex(len(frame))):
                # Nothing to drop (a cut at the end of the log): a shallow copy, not a copy of
                # every column (gigabytes of id strings at ten million orders). Copy-on-write
                # keeps the caller's frame unchanged when a column is masked below.
                part = frame.copy(deep=False)
            elif known[:n_known].all() and frame.index.equals(pd.RangeIndex(len(frame))):
                # The known rows are the first ones (a table logged in event-time order, as the
                # loader's and the simulator's are): a slice of them, not a copy. Same rows,
                # same order and index as the copy below; copy-on-write again.
                part = frame.iloc[:n_known]
            else:
                part = frame.loc[known].reset_index(drop=True)
            for column, revealed_by in spec.resolution:
                revealed = (part[revealed_by] < cut_time).to_numpy(dtype=bool, na_value=False)
                if not revealed.all():
                    part[column] = part[column].where(revealed)
            cut[name] = part
        return EventLog(cut, self.missing, self.warnings, self.missing_columns)

    def span(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        """First and last order ``created_at`` (UTC).

        Raises :class:`~trustfeed.features.errors.SchemaError` when there are no orders.
        """
        created = self.tables["orders"]["created_at"]
        if created.empty:
            raise SchemaError("orders", "created_at", "at least one order to span", "an empty table")
        return created.min(), created.max()

    def summary(self) -> str:
        """A multi-line human summary: rows per table, missing tables, time span, warnings."""
        width = max(len(name) for name in TABLES)
        total = sum(len(self.tables[name]) for name in TABLES if name not in self.missing)
        present = len(TABLES) - len(self.missing)
        lines = [f"event log: {present} of {len(TABLES)} tables, {total:,} rows"]
        if len(self.tables["orders"]):
            first, last = self.span()
            lines.append(f"orders from {first.isoformat()} to {last.isoformat()}")
        for name, spec in TABLES.items():
            if name in self.missing:
                lines.append(f"  {name:<{width}}  missing (optional)")
            else:
                tag = " (required)" if spec.required else ""
                lines.append(f"  {name:<{width}}  {len(self.tables[name]):>12,} rows{tag}")
        lines.append("missing optional tables: " + (", ".join(self.missing) if self.missing else "none"))
        if self.warnings:
            lines.append(f"warnings ({len(self.warnings)}):")
            lines.extend(f"  - {warning}" for warning in self.warnings)
        else:
            lines.append("warnings: none")
        return "\n".join(lines)


# --------------------------------------------------------------------------- validation


class _Bad(Exception):
    """Raised inside a column coercion; the caller adds table context and sample rows."""

    def __init__(self, got: str, mask: Any = None) -> None:
        super().__init__(got)
        self.got = got
        self.mask = mask


def _sample(frame: pd.DataFrame, mask: Any, spec: TableSpec, column: str | None) -> pd.DataFrame | None:
    if mask is None:
        return None
    mask = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(mask)[:_SAMPLE_ROWS]
    keys = [c for c in spec.key if c in frame.columns and c != column]
    shown = keys + ([column] if column is not None and column in frame.columns else [])
    return frame.iloc[rows][shown] if shown else frame.iloc[rows]


def _count(mask: Any) -> int:
    return int(np.count_nonzero(np.asarray(mask, dtype=bool)))


def _many(mask: Any, singular: str, plural: str) -> str:
    count = _count(mask)
    return f"{count:,} {singular if count == 1 else plural}"


def _is_stringish(series: pd.Series) -> bool:
    return bool(
        pd.api.types.is_object_dtype(series.dtype)
        or pd.api.types.is_string_dtype(series.dtype)
        or isinstance(series.dtype, pd.CategoricalDtype)
    )


def _blank_to_null(series: pd.Series) -> pd.Series:
    import pyarrow as pa
    import pyarrow.compute as pc

    text = series.astype(ID_DTYPE)
    # Classifying in pyarrow avoids materialising stripped copies of every id.
    values = pa.chunked_array(pa.array(text.array))
    blank = pc.fill_null(pc.or_(pc.equal(pc.utf8_length(values), 0), pc.utf8_is_space(values)), False)
    if not pc.any(blank).as_py():
        return text
    return text.mask(blank.to_numpy())


_EXACT_FLOAT_INTEGER = 2.0**53


def _coerce_id(series: pd.Series) -> pd.Series:
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        raise _Bad("booleans", series.notna())
    if pd.api.types.is_integer_dtype(dtype):
        return series.astype(ID_DTYPE)
    if pd.api.types.is_float_dtype(dtype):
        values = series.astype("float64")
        fractional = values.notna() & (values != np.floor(values))
        if fractional.any():
            raise _Bad("non-integer numbers", fractional)
        # beyond 2**53 a float no longer holds one exact integer (and infinity none at all)
        inexact = values.notna() & ~(values.abs() <= _EXACT_FLOAT_INTEGER)
        if inexact.any():
            raise _Bad(f"numbers beyond {_EXACT_FLOAT_INTEGER:.0f} that a float cannot hold exactly", inexact)
        return values.astype("Int64").astype(ID_DTYPE)
    if pd.api.types.is_datetime64_any_dtype(dtype) or isinstance(dtype, pd.DatetimeTZDtype):
        raise _Bad("timestamps", series.notna())
    if dtype == ID_DTYPE:
        return _blank_to_null(series)
    return _blank_to_null(series.astype(ID_DTYPE))


def _coerce_time(series: pd.Series) -> pd.Series:
    dtype = series.dtype
    if isinstance(dtype, pd.DatetimeTZDtype):
        parsed = series.dt.tz_convert("UTC")
    elif pd.api.types.is_datetime64_dtype(dtype):
        parsed = series.dt.tz_localize("UTC")
    elif _is_stringish(series):
        raw = series.astype(object) if isinstance(dtype, pd.CategoricalDtype) else series
        if pd.api.types.is_object_dtype(raw.dtype):
            inferred = pd.api.types.infer_dtype(raw, skipna=True)
            if inferred in ("integer", "floating", "mixed-integer-float", "decimal", "boolean"):
                raise _Bad(_NOT_TIME + f" ({inferred} values)", raw.notna())
            if inferred not in ("string", "datetime", "datetime64", "date", "empty"):
                # Mixed objects: compare their text forms, which is what a CSV would hold.
                raw = raw.where(raw.isna(), raw.astype(str))
        if pd.api.types.is_string_dtype(raw.dtype):
            raw = _blank_to_null(raw) if not pd.api.types.is_object_dtype(raw.dtype) else raw
        parsed = pd.to_datetime(raw, utc=True, format="ISO8601", errors="coerce")
        unparsed = parsed.isna() & raw.notna()
        if unparsed.any():
            got = _many(unparsed, "value that is not an ISO 8601 timestamp", "values that are not ISO 8601 timestamps")
            raise _Bad(got, unparsed)
    else:
        raise _Bad(_NOT_TIME + f" (dtype {dtype})", series.notna())
    try:
        return parsed.dt.as_unit("ns")
    except (OverflowError, pd.errors.OutOfBoundsDatetime):
        lowest, highest = pd.Timestamp.min.tz_localize("UTC"), pd.Timestamp.max.tz_localize("UTC")
        outside = (parsed < lowest) | (parsed > highest)
        raise _Bad("timestamps outside 1677..2262", outside) from None


def _coerce_number(series: pd.Series, column: ColumnSpec) -> pd.Series:
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        raise _Bad("booleans", series.notna())
    if pd.api.types.is_numeric_dtype(dtype):
        values = series.astype("float64")
    elif _is_stringish(series):
        raw = series.astype(object) if isinstance(dtype, pd.CategoricalDtype) else series
        numeric = pd.to_numeric(raw, errors="coerce")
        values = numeric.astype("float64")
        unparsed = values.isna() & raw.notna()
        if unparsed.any():
            text = raw.astype(ID_DTYPE)
            blank = (text.str.strip() == "").to_numpy(dtype=bool, na_value=False)
            unparsed = unparsed & ~blank
            if unparsed.any():
                raise _Bad(_many(unparsed, "value that is not a number", "values that are not numbers"), unparsed)
    else:
        raise _Bad(f"dtype {dtype}", series.notna())
    array = values.to_numpy()
    infinite = np.isinf(array)
    if infinite.any():
        raise _Bad(_many(infinite, "infinite value", "infinite values"), infinite)
    out_of_range = np.zeros(len(array), dtype=bool)
    if column.minimum is not None:
        out_of_range |= array < column.minimum
    if column.maximum is not None:
        out_of_range |= array > column.maximum
    if out_of_range.any():
        shown = np.unique(array[out_of_range])[:_SAMPLE_ROWS]
        listed = ", ".join(f"{v:g}" for v in shown)
        raise _Bad(_many(out_of_range, "value", "values") + f" out of range (e.g. {listed})", out_of_range)
    if column.kind == "int":
        fractional = ~np.isnan(array) & (array != np.floor(array))
        if fractional.any():
            raise _Bad(_many(fractional, "non-integer value", "non-integer values"), fractional)
        if column.required and not np.isnan(array).any():
            return pd.Series(array.astype("int64"), index=series.index, name=series.name)
        return values.astype(pd.Int64Dtype())
    return values


def _coerce_bool(series: pd.Series) -> pd.Series:
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return series.astype(pd.BooleanDtype())
    if pd.api.types.is_numeric_dtype(dtype):
        values = series.astype("float64")
        bad = values.notna() & ~values.isin([0.0, 1.0])
        if bad.any():
            raise _Bad(_many(bad, "number other than 0/1", "numbers other than 0/1"), bad)
        return values.astype(pd.BooleanDtype())
    if not _is_stringish(series):
        raise _Bad(f"dtype {dtype}", series.notna())
    words = series.astype(object).astype(ID_DTYPE).str.strip().str.lower()
    is_true = words.isin(_TRUE_WORDS).to_numpy(dtype=bool, na_value=False)
    is_false = words.isin(_FALSE_WORDS).to_numpy(dtype=bool, na_value=False)
    is_null = (words.isna() | (words == "")).to_numpy(dtype=bool, na_value=True)
    unparsed = ~(is_true | is_false | is_null)
    if unparsed.any():
        raise _Bad(_many(unparsed, "value that is not true/false/1/0", "values that are not true/false/1/0"), unparsed)
    array = pd.arrays.BooleanArray(is_true, ~(is_true | is_false))
    return pd.Series(array, index=series.index, name=series.name)


def _coerce_enum(series: pd.Series, column: ColumnSpec) -> pd.Series:
    target = pd.CategoricalDtype(list(column.categories))
    if isinstance(series.dtype, pd.CategoricalDtype):
        # Check the (few) categories, not the rows: Parquet round trips stay cheap.
        levels = series.cat.categories.astype(object)
        foreign = [level for level in levels if level not in column.categories]
        bad = series.isin(foreign) if foreign else None
        if bad is not None and bad.any():
            shown = ", ".join(repr(v) for v in pd.unique(series[bad].astype(object))[:_SAMPLE_ROWS])
            raise _Bad(_many(bad, "other value", "other values") + f" ({shown})", bad)
        return series.cat.set_categories(list(column.categories))
    text = _coerce_id(series) if not pd.api.types.is_bool_dtype(series.dtype) else None
    if text is None:
        raise _Bad("booleans", series.notna())
    bad_values = text.notna() & ~text.isin(column.categories)
    bad_rows = bad_values.to_numpy(dtype=bool, na_value=False)
    if bad_rows.any():
        shown = ", ".join(repr(v) for v in pd.unique(text[bad_rows].astype(object))[:_SAMPLE_ROWS])
        raise _Bad(_many(bad_rows, "other value", "other values") + f" ({shown})", bad_rows)
    return text.astype(target)


def _null_column(column: ColumnSpec, n_rows: int) -> pd.Series:
    dtype = _dtype_of(column)
    if column.kind in ("id", "text"):
        import pyarrow as pa

        return pd.Series(pd.array(pa.nulls(n_rows, pa.large_string()), dtype=dtype), name=column.name)
    if column.kind == "time":
        return pd.Series(np.full(n_rows, np.datetime64("NaT", "ns")), dtype="datetime64[ns]", name=column.name).dt.tz_localize("UTC")
    # Reindexing an empty typed series fills with that dtype's null without a Python list.
    return pd.Series([], dtype=dtype, name=column.name).reindex(pd.RangeIndex(n_rows))


def _numpy_backed(series: pd.Series) -> pd.Series:
    """Frames read with ``dtype_backend="pyarrow"`` hold ``ArrowDtype`` columns; checking
    them through their classic pandas form keeps one set of rules for every input."""
    if not isinstance(series.dtype, pd.ArrowDtype):
        return series
    import pyarrow as pa

    if pa.types.is_string(series.dtype.pyarrow_dtype) or pa.types.is_large_string(series.dtype.pyarrow_dtype):
        return series.astype(ID_DTYPE)
    converted = pa.chunked_array(pa.array(series.array)).to_pandas()
    converted.index, converted.name = series.index, series.name
    return converted


def _coerce(series: pd.Series, column: ColumnSpec) -> pd.Series:
    series = _numpy_backed(series)
    if column.kind == "id":
        return _coerce_id(series)
    if column.kind == "text":
        if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
            return _coerce_id(series)
        if isinstance(series.dtype, pd.CategoricalDtype):
            series = series.astype(object)
        return series.astype(ID_DTYPE)
    if column.kind == "time":
        return _coerce_time(series)
    if column.kind in ("float", "int"):
        return _coerce_number(series, column)
    if column.kind == "bool":
        return _coerce_bool(series)
    return _coerce_enum(series, column)


def _validate_table(spec: TableSpec, raw: pd.DataFrame) -> tuple[pd.DataFrame, tuple[str, ...], list[str]]:
    """Coerce and check one table; returns the frame, absent optional columns, warnings."""
    if not isinstance(raw, pd.DataFrame):
        raise SchemaError(spec.name, None, "a pandas DataFrame", type(raw).__name__)
    frame = raw.reset_index(drop=True)
    repeated = sorted({c for c in frame.columns[frame.columns.duplicated()] if c in spec})
    if repeated:
        raise SchemaError(spec.name, repeated[0], "one column of that name", "the column appears more than once")
    missing_required = [name for name in spec.required_columns if name not in frame.columns]
    if missing_required:
        present = ", ".join(str(c) for c in raw.attrs.get("source_columns", frame.columns)) or "none"
        raise SchemaError(
            spec.name,
            ", ".join(missing_required),
            "required column" + ("s" if len(missing_required) > 1 else ""),
            f"no such column (columns present: {present})",
        )
    absent = tuple(column.name for column in spec.columns if column.name not in frame.columns)
    n_rows = len(frame)
    validated: dict[str, pd.Series] = {}
    for column in spec.columns:
        if column.name not in frame.columns:
            validated[column.name] = _null_column(column, n_rows)
            continue
        try:
            values = _coerce(frame[column.name], column)
        except _Bad as bad:
            raise SchemaError(
                spec.name, column.name, column.expected, bad.got, _sample(frame, bad.mask, spec, column.name)
            ) from None
        if column.required:
            nulls = values.isna().to_numpy()
            if nulls.any():
                raise SchemaError(
                    spec.name,
                    column.name,
                    f"{column.expected}, never null (required)",
                    _many(nulls, "null value", "null values"),
                    _sample(frame, nulls, spec, column.name),
                )
        validated[column.name] = values.reset_index(drop=True)
    table = pd.DataFrame(validated, copy=False)
    duplicated = _duplicated_keys(table, spec.key)
    if duplicated.any():
        key = ", ".join(spec.key)
        raise SchemaError(
            spec.name,
            key,
            f"a unique key ({key})",
            _many(duplicated, "row", "rows") + " sharing a key",
            _sample(frame, duplicated, spec, None),
        )
    warnings = _consistency_warnings(spec, table)
    if absent:
        warnings.insert(0, f"{spec.name}: optional columns absent (read as null): {', '.join(absent)}")
    if n_rows == 0:
        warnings.insert(0, f"{spec.name}: the table has no rows")
    return table, absent, warnings


def _duplicated_keys(table: pd.DataFrame, key: tuple[str, ...]) -> np.ndarray:
    """Mask of rows whose key occurs more than once.

    Factorizing is several times faster than ``DataFrame.duplicated`` on pyarrow strings,
    and the common all-unique case then needs no second pass.
    """
    codes, uniques = pd.factorize(table[key[0]], use_na_sentinel=False)
    n_codes = len(uniques)
    for column in key[1:]:
        more, more_uniques = pd.factorize(table[column], use_na_sentinel=False)
        # Re-factorize the pair so the combined code stays below the row count (no overflow).
        codes, combined = pd.factorize(codes.astype(np.int64) * len(more_uniques) + more)
        n_codes = len(combined)
    if n_codes == len(table):
        return np.zeros(len(table), dtype=bool)
    return np.bincount(codes, minlength=n_codes)[codes] > 1


def _consistency_warnings(spec: TableSpec, table: pd.DataFrame) -> list[str]:
    warnings: list[str] = []
    start = table[spec.event_time]
    for column, revealed_by in spec.resolution:
        if column == revealed_by:
            early = (table[column] < start).to_numpy(dtype=bool, na_value=False)
            if early.any():
                warnings.append(
                    f"{spec.name}.{column}: {_count(early):,} rows earlier than {spec.event_time}"
                )
        else:
            orphan = (table[column].notna() & table[revealed_by].isna()).to_numpy(dtype=bool, na_value=False)
            if orphan.any():
                warnings.append(
                    f"{spec.name}.{column}: {_count(orphan):,} rows set without {revealed_by}; "
                    "point-in-time cuts treat them as not yet known"
                )
    return warnings


def _unknown_references(values: pd.Series, known: pd.Series) -> np.ndarray:
    """Mask of non-null ``values`` absent from ``known``.

    ``pyarrow.compute.is_in`` hashes the Arrow buffers directly; ``Series.isin`` on
    pyarrow-backed strings goes through Python objects and dominated load time.
    """
    values_arrow = pa.array(values, type=pa.large_string(), from_pandas=True)
    known_arrow = pa.array(known.dropna().unique(), type=pa.large_string(), from_pandas=True)
    present = pc.is_in(values_arrow, value_set=known_arrow, skip_nulls=True)
    unknown = pc.and_(pc.is_valid(values_arrow), pc.invert(present))
    return unknown.to_numpy(zero_copy_only=False).astype(bool, copy=False)


def _reference_warnings(tables: Mapping[str, pd.DataFrame], missing: Iterable[str]) -> list[str]:
    absent = set(missing)
    warnings: list[str] = []
    for spec in TABLES.values():
        if spec.name in absent:
            continue
        for reference in spec.references:
            if reference.table in absent:
                continue
            values = tables[spec.name][reference.column]
            known = tables[reference.table][reference.target]
            unknown = _unknown_references(values, known)
            if unknown.any():
                examples = ", ".join(repr(v) for v in pd.unique(values[unknown].astype(object))[:3])
                warnings.append(
                    f"{spec.name}.{reference.column}: {_count(unknown):,} of {len(values):,} rows "
                    f"reference ids not in {reference.table}.{reference.target} (e.g. {examples})"
                )
    return warnings


def _validate(raw_tables: Mapping[str, pd.DataFrame], notes: Iterable[str] = (), partial: bool = False) -> EventLog:
    for name in () if partial else REQUIRED_TABLES:
        if name not in raw_tables or raw_tables[name] is None:
            raise SchemaError(name, None, "a required table", "no such table")
    tables: dict[str, pd.DataFrame] = {}
    missing: list[str] = []
    missing_columns: dict[str, tuple[str, ...]] = {}
    warnings: list[str] = list(notes)
    for name, spec in TABLES.items():
        raw = raw_tables.get(name)
        if raw is None:
            tables[name] = empty_table(name)
            missing.append(name)
            continue
        table, absent, table_warnings = _validate_table(spec, raw)
        tables[name] = table
        if absent:
            missing_columns[name] = absent
        warnings.extend(table_warnings)
    warnings.extend(_reference_warnings(tables, missing))
    return EventLog(tables, tuple(missing), tuple(warnings), missing_columns)


def validate_events(tables: Mapping[str, pd.DataFrame]) -> EventLog:
    """Coerce and check in-memory tables against the schema.

    Parameters
    ----------
    tables
        Frames by table name. ``merchants`` and ``orders`` are required; any other schema
        table may be left out (it is then recorded in ``EventLog.missing``). Names that are
        not schema tables and undeclared columns are ignored. The inputs are not modified.

    Returns
    -------
    EventLog

    Raises
    ------
    SchemaError
        On the first problem: a missing required table or column, a value that cannot be
        coerced, an enum value outside the list, a number out of range, a null in a
        required column or a duplicate key.

    Examples
    --------
    >>> import pandas as pd
    >>> events = validate_events({
    ...     "merchants": pd.DataFrame({"merchant_id": [1, 2], "registered_at": ["2026-01-01"] * 2}),
    ...     "orders": pd.DataFrame({"order_id": ["o1"], "user_id": ["u1"], "merchant_id": ["1"],
    ...                             "created_at": ["2026-01-02T10:00:00Z"], "amount": [12.5]}),
    ... })
    >>> events["merchants"]["merchant_id"].tolist()
    ['1', '2']
    >>> try:
    ...     validate_events({"merchants": events["merchants"], "orders": pd.DataFrame({"order_id": ["o1"]})})
    ... except SchemaError as error:
    ...     print(error)
    orders.user_id, merchant_id, created_at, amount: expected required columns, got no such column (columns present: order_id)
    """
    return _validate(tables)


def validate_table(name: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Coerce and check the rows of one table on their own, as :func:`validate_events` does.

    The checks that need other tables (ids referenced elsewhere) are left out, and keys are
    unique within ``frame`` only: for a part of a table whose whole was validated before
    (the Dask training backend's workers read their own parts of the impressions file).

    Raises
    ------
    SchemaError
        As :func:`validate_events`, for this table.

    Examples
    --------
    >>> import pandas as pd
    >>> part = validate_table("merchants", pd.DataFrame({"merchant_id": [7], "registered_at": ["2026-01-01"]}))
    >>> part["merchant_id"].tolist(), str(part["registered_at"].dtype)
    (['7'], 'datetime64[ns, UTC]')
    """
    table, _, _ = _validate_table(_spec(name), frame)
    return table


# --------------------------------------------------------------------------- files


def _read_table(spec: TableSpec, path: Path) -> pd.DataFrame:
    try:
        if path.suffix == ".parquet":
            import pyarrow.dataset as ds

            names = list(ds.dataset(str(path), format="parquet").schema.names)
            frame = pd.read_parquet(path, columns=[name for name in names if name in spec])
        else:
            names = [str(name) for name in pd.read_csv(path, nrows=0).columns]
            # Everything is read as text first so ids keep their leading zeros and every
            # coercion (and its error message) happens in one place.
            wanted = [name for name in names if name in spec]
            # The pyarrow parser is multi-threaded and about twice as fast as the C one.
            frame = pd.read_csv(path, dtype=str, usecols=wanted, engine="pyarrow")
    except pd.errors.EmptyDataError:
        raise SchemaError(spec.name, None, "a CSV file with a header row", f"an empty file {path.name}") from None
    except (OSError, ValueError, pd.errors.ParserError) as error:
        got = " ".join(f"{type(error).__name__}: {error}".split())
        raise SchemaError(spec.name, None, f"a readable {path.suffix[1:]} file", got) from None
    except Exception as error:  # pyarrow's own error types do not all derive from the above
        if type(error).__module__.startswith("pyarrow"):
            got = " ".join(f"{type(error).__name__}: {error}".split())
            raise SchemaError(spec.name, None, f"a readable {path.suffix[1:]} file", got) from None
        raise
    # Undeclared columns are not read; remember them so a missing-column error can show
    # what the file does have (a typo such as ``Amount`` is then obvious).
    frame.attrs["source_columns"] = names
    return frame


def load_events(path: str | os.PathLike[str], *, partial: bool = False) -> EventLog:
    """Read and validate a dataset directory.

    For each table, ``<table>.parquet`` is read if present, else ``<table>.csv``.
    CSV timestamps are ISO 8601 (naive ones are UTC); empty CSV fields are nulls.
    Other files and subdirectories (e.g. ``truth/``) are ignored.

    Parameters
    ----------
    path
        The dataset directory.
    partial
        The directory holds only some new events (the incremental update): the required
        tables may be absent too (they are then empty and listed in ``missing``).

    Returns
    -------
    EventLog

    Raises
    ------
    FileNotFoundError, NotADirectoryError
        ``path`` does not exist or is not a directory.
    SchemaError
        A required table is missing, a file is unreadable, or a table breaks the schema
        (see :func:`validate_events`).

    Examples
    --------
    >>> import tempfile, pandas as pd
    >>> directory = tempfile.mkdtemp()
    >>> pd.DataFrame({"merchant_id": ["m1"], "registered_at": ["2026-01-01"]}).to_csv(
    ...     f"{directory}/merchants.csv", index=False)
    >>> pd.DataFrame({"order_id": ["o1"], "user_id": ["u1"], "merchant_id": ["m1"],
    ...               "created_at": ["2026-01-02"], "amount": [9.9]}).to_csv(
    ...     f"{directory}/orders.csv", index=False)
    >>> events = load_events(directory)
    >>> events["orders"]["amount"].tolist(), len(events.missing)
    ([9.9], 10)
    """
    directory = Path(path)
    if not directory.exists():
        raise FileNotFoundError(f"event directory {str(directory)!r} does not exist")
    if not directory.is_dir():
        raise NotADirectoryError(f"event path {str(directory)!r} is not a directory")
    raw: dict[str, pd.DataFrame] = {}
    notes: list[str] = []
    for name, spec in TABLES.items():
        parquet, csv = directory / f"{name}.parquet", directory / f"{name}.csv"
        if parquet.exists():
            if csv.exists():
                notes.append(f"{name}: both {parquet.name} and {csv.name} found; read {parquet.name}")
            raw[name] = _read_table(spec, parquet)
        elif csv.exists():
            raw[name] = _read_table(spec, csv)
        elif spec.required and not partial:
            raise SchemaError(
                name, None, f"a file {name}.parquet or {name}.csv (required table)", f"neither in {directory}"
            )
    return _validate(raw, notes, partial)


def write_events(tables: Mapping[str, pd.DataFrame] | EventLog, path: str | os.PathLike[str]) -> None:
    """Validate tables and write them as a dataset directory of Parquet files.

    The directory is written atomically: a complete new directory replaces ``path`` (any
    previous content of ``path``, including a ``truth/`` folder, is removed), or nothing
    changes. Callers that add files beside the tables (``truth/``) write them afterwards.

    Parameters
    ----------
    tables
        Frames by table name (validated first, see :func:`validate_events`), or an
        :class:`EventLog`, whose ``missing`` tables are not written so they stay missing.
    path
        The dataset directory to create or replace.

    Raises
    ------
    SchemaError
        A table breaks the schema, or a name is not a schema table (likely a typo).

    Examples
    --------
    >>> import tempfile, pandas as pd
    >>> out = tempfile.mkdtemp() + "/events"
    >>> write_events({
    ...     "merchants": pd.DataFrame({"merchant_id": ["m1"], "registered_at": ["2026-01-01"]}),
    ...     "orders": pd.DataFrame({"order_id": ["o1"], "user_id": ["u1"], "merchant_id": ["m1"],
    ...                             "created_at": ["2026-01-02"], "amount": [1.0]}),
    ... }, out)
    >>> load_events(out)["orders"]["order_id"].tolist()
    ['o1']
    """
    if isinstance(tables, EventLog):
        # Re-validated: an EventLog's frames are plain DataFrames a caller may have changed.
        events = validate_events({name: tables[name] for name in TABLES if name not in tables.missing})
    else:
        unknown = [name for name in tables if name not in TABLES]
        if unknown:
            _spec(str(unknown[0]))
        events = validate_events(tables)
    with atomic_dir(path, "events") as staging:
        for name in TABLES:
            if name in events.missing:
                continue
            events.tables[name].to_parquet(staging / f"{name}.parquet", index=False)

