"""Event-log schema, loading, validation, point-in-time cut and round trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trustfeed.features.errors import ConfigError, OutputError, SchemaError
from trustfeed.features.io import OUTPUT_MARKER
from trustfeed.features.events import (
    REQUIRED_TABLES,
    TABLES,
    EventLog,
    empty_table,
    load_events,
    table_dtypes,
    to_utc,
    validate_events,
    write_events,
)

UTC = "UTC"


def tiny_tables() -> dict[str, pd.DataFrame]:
    """A small, fully consistent dataset with every table, timestamps as ISO text."""
    return {
        "merchants": pd.DataFrame(
            {
                "merchant_id": ["m1", "m2", "m3"],
                "registered_at": ["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", "2026-01-20T00:00:00Z"],
                "entity_id": ["e1", "e2", "e1"],
                "category": ["beauty", "food", "beauty"],
            }
        ),
        "creators": pd.DataFrame(
            {
                "creator_id": ["c1", "c2"],
                "registered_at": ["2026-01-01T00:00:00Z", "2026-01-03T00:00:00Z"],
                "merchant_id": ["m1", None],
                "followers": [1200.0, 35.0],
            }
        ),
        "livestreams": pd.DataFrame(
            {
                "stream_id": ["s1", "s2"],
                "creator_id": ["c1", "c2"],
                "merchant_id": ["m1", "m2"],
                "started_at": ["2026-01-05T10:00:00Z", "2026-01-06T10:00:00Z"],
                "ended_at": ["2026-01-05T12:00:00Z", None],
                "category": ["beauty", "food"],
            }
        ),
        "orders": pd.DataFrame(
            {
                "order_id": ["o1", "o2", "o3", "o4"],
                "user_id": ["u1", "u2", "u1", "u3"],
                "merchant_id": ["m1", "m1", "m2", "m2"],
                "created_at": [
                    "2026-01-05T10:30:00Z",
                    "2026-01-06T09:00:00Z",
                    "2026-01-06T11:00:00Z",
                    "2026-01-10T08:00:00Z",
                ],
                "amount": [19.9, 0.0, 250.0, 12.5],
                "creator_id": ["c1", None, "c2", None],
                "stream_id": ["s1", None, "s2", None],
                "status": ["paid", "cancelled", "paid", "paid"],
                "promised_ship_by": ["2026-01-07T00:00:00Z", None, "2026-01-08T00:00:00Z", "2026-01-12T00:00:00Z"],
                "shipped_at": ["2026-01-06T00:00:00Z", None, "2026-01-09T00:00:00Z", None],
                "delivered_at": ["2026-01-08T00:00:00Z", None, None, None],
                "presale": [False, False, True, None],
            }
        ),
        "after_sales": pd.DataFrame(
            {
                "case_id": ["a1", "a2"],
                "order_id": ["o1", "o3"],
                "opened_at": ["2026-01-09T00:00:00Z", "2026-01-10T00:00:00Z"],
                "type": ["return", "refund_only"],
                "reason": ["quality", None],
                "resolved_at": ["2026-01-12T00:00:00Z", None],
                "outcome": ["buyer_favor", None],
                "platform_intervened": [True, None],
            }
        ),
        "reviews": pd.DataFrame(
            {
                "review_id": ["r1", "r2"],
                "order_id": ["o1", "o3"],
                "user_id": ["u1", "u1"],
                "created_at": ["2026-01-09T00:00:00Z", "2026-01-11T00:00:00Z"],
                "rating": [2, 5],
                "quality": [1, None],
                "service": [3, 5],
                "logistics": [None, 4],
            }
        ),
        "reports": pd.DataFrame(
            {
                "report_id": ["p1"],
                "reporter_id": ["u2"],
                "created_at": ["2026-01-07T00:00:00Z"],
                "category": ["counterfeit"],
                "merchant_id": ["m1"],
                "creator_id": [None],
                "stream_id": ["s1"],
                "verified": [None],
            }
        ),
        "violations": pd.DataFrame(
            {
                "violation_id": ["v1"],
                "merchant_id": ["m2"],
                "created_at": ["2026-01-08T00:00:00Z"],
                "severity": [2],
                "creator_id": ["c2"],
                "type": ["false_claims"],
                "penalty": ["restriction"],
            }
        ),
        "guarantees": pd.DataFrame(
            {
                "merchant_id": ["m1", "m1", "m2"],
                "benefit": ["return_freight", "fast_refund", "return_freight"],
                "enrolled_at": ["2026-01-02T00:00:00Z", "2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z"],
                "left_at": [None, "2026-01-09T00:00:00Z", None],
            }
        ),
        "nps": pd.DataFrame(
            {
                "response_id": ["n1", "n2"],
                "user_id": ["u1", "u3"],
                "merchant_id": ["m1", "m2"],
                "created_at": ["2026-01-08T00:00:00Z", "2026-01-11T00:00:00Z"],
                "score": [9, 0],
            }
        ),
        "follows": pd.DataFrame(
            {
                "user_id": ["u1", "u2"],
                "creator_id": ["c1", "c1"],
                "followed_at": ["2026-01-04T00:00:00Z", "2026-01-05T11:00:00Z"],
            }
        ),
        "impressions": pd.DataFrame(
            {
                "request_id": ["q1", "q1", "q2"],
                "user_id": ["u1", "u1", "u2"],
                "ts": ["2026-01-05T10:20:00Z", "2026-01-05T10:20:00Z", "2026-01-06T10:10:00Z"],
                "stream_id": ["s1", "s2", "s2"],
                "creator_id": ["c1", "c2", "c2"],
                "merchant_id": ["m1", "m2", "m2"],
                "position": [1, 2, 1],
                "clicked": [True, False, True],
                "watch_seconds": [95.0, 0.0, 12.0],
                "purchased": [True, False, False],
                "order_id": ["o1", None, None],
            }
        ),
    }


def required_only() -> dict[str, pd.DataFrame]:
    tables = tiny_tables()
    return {name: tables[name] for name in REQUIRED_TABLES}


def with_column(
    tables: dict[str, pd.DataFrame], table: str, column: str, values: list[object] | np.ndarray
) -> dict[str, pd.DataFrame]:
    changed = dict(tables)
    frame = tables[table].copy()
    frame[column] = values if isinstance(values, np.ndarray) else pd.Series(values, dtype=object)
    changed[table] = frame
    return changed


def write_csv_dir(tables: dict[str, pd.DataFrame], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        frame.to_csv(directory / f"{name}.csv", index=False)
    return directory


# --------------------------------------------------------------------------- the schema


def test_schema_declares_all_twelve_tables_with_contract_keys() -> None:
    assert list(TABLES) == [
        "merchants", "creators", "livestreams", "orders", "after_sales", "reviews",
        "reports", "violations", "guarantees", "nps", "follows", "impressions",
    ]  # fmt: skip
    assert REQUIRED_TABLES == ("merchants", "orders")
    assert TABLES["impressions"].key == ("request_id", "stream_id")
    assert TABLES["guarantees"].key == ("merchant_id", "benefit", "enrolled_at")
    assert TABLES["follows"].key == ("user_id", "creator_id", "followed_at")
    assert dict(TABLES["after_sales"].resolution) == {"resolved_at": "resolved_at", "outcome": "resolved_at"}


# --------------------------------------------------------------------------- happy path


def test_validated_tables_have_declared_dtypes_and_no_warnings() -> None:
    events = validate_events(tiny_tables())
    assert events.missing == ()
    assert events.warnings == ()
    for name in TABLES:
        frame = events[name]
        assert list(frame.columns) == list(TABLES[name].column_names)
        assert frame.dtypes.to_dict() == table_dtypes(name), name
    assert events["orders"]["amount"].dtype == np.float64
    assert events["reviews"]["rating"].dtype == np.int64
    assert str(events["reviews"]["quality"].dtype) == "Int64"
    assert list(events["orders"]["status"].cat.categories) == ["paid", "cancelled"]


def test_validate_does_not_modify_its_inputs() -> None:
    tables = tiny_tables()
    before = {name: frame.copy() for name, frame in tables.items()}
    validate_events(tables)
    for name, frame in tables.items():
        pd.testing.assert_frame_equal(frame, before[name])


def test_integer_ids_become_strings_and_keep_leading_zeros_from_csv(tmp_path: Path) -> None:
    tables = required_only()
    tables["merchants"] = tables["merchants"].assign(merchant_id=[1, 2, 3])
    tables["orders"] = tables["orders"].assign(merchant_id=[1, 1, 2, 2], user_id=["007", "008", "007", "009"])
    from_frames = validate_events(tables)
    assert from_frames["merchants"]["merchant_id"].tolist() == ["1", "2", "3"]
    assert from_frames["merchants"]["merchant_id"].dtype == pd.StringDtype("pyarrow")
    from_csv = load_events(write_csv_dir(tables, tmp_path / "csv"))
    assert from_csv["orders"]["user_id"].tolist() == ["007", "008", "007", "009"]
    assert from_csv["orders"]["merchant_id"].tolist() == ["1", "1", "2", "2"]
    assert not any("merchant_id" in warning for warning in from_csv.warnings)


def test_float_ids_that_are_whole_numbers_become_integer_strings() -> None:
    tables = required_only()
    tables["merchants"] = tables["merchants"].assign(merchant_id=[1.0, 2.0, 3.0])
    tables["orders"] = tables["orders"].assign(merchant_id=["1", "1", "2", "2"])
    assert validate_events(tables)["merchants"]["merchant_id"].tolist() == ["1", "2", "3"]


def test_timestamps_are_utc_naive_taken_as_utc_and_offsets_converted() -> None:
    tables = required_only()
    tables["orders"] = tables["orders"].assign(
        created_at=["2026-01-05 10:30:00", "2026-01-06T17:00:00+08:00", "2026-01-06T11:00:00Z", "2026-01-10"]
    )
    created = validate_events(tables)["orders"]["created_at"]
    assert str(created.dtype) == "datetime64[ns, UTC]"
    assert created.tolist() == [
        pd.Timestamp("2026-01-05 10:30", tz=UTC),
        pd.Timestamp("2026-01-06 09:00", tz=UTC),
        pd.Timestamp("2026-01-06 11:00", tz=UTC),
        pd.Timestamp("2026-01-10 00:00", tz=UTC),
    ]


def test_datetime_columns_naive_or_in_other_zones_are_normalised_to_utc() -> None:
    tables = required_only()
    naive = pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-03"]).as_unit("s")
    tables["merchants"] = tables["merchants"].assign(registered_at=naive)
    shanghai = pd.to_datetime(tables["orders"]["created_at"], utc=True).dt.tz_convert("Asia/Shanghai")
    tables["orders"] = tables["orders"].assign(created_at=shanghai)
    events = validate_events(tables)
    assert events["merchants"]["registered_at"].iloc[1] == pd.Timestamp("2026-01-02", tz=UTC)
    assert events["orders"]["created_at"].iloc[0] == pd.Timestamp("2026-01-05T10:30:00", tz=UTC)
    assert str(events["orders"]["created_at"].dtype) == "datetime64[ns, UTC]"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (["true", "false", "", "TRUE"], [True, False, None, True]),
        (["1", "0", "1", ""], [True, False, True, None]),
        ([1.0, 0.0, np.nan, 1.0], [True, False, None, True]),
        ([True, None, False, True], [True, None, False, True]),
    ],
)
def test_booleans_accept_words_digits_and_empty(raw: list[object], expected: list[object]) -> None:
    tables = with_column(required_only(), "orders", "presale", raw)
    presale = validate_events(tables)["orders"]["presale"]
    assert str(presale.dtype) == "boolean"
    assert [None if pd.isna(v) else bool(v) for v in presale] == expected


def test_booleans_from_csv(tmp_path: Path) -> None:
    directory = write_csv_dir(required_only(), tmp_path / "csv")
    text = (directory / "orders.csv").read_text().splitlines()
    header, rows = text[0], text[1:]
    column = header.split(",").index("presale")
    fixed = []
    for row, word in zip(rows, ["true", "false", "1", ""], strict=True):
        cells = row.split(",")
        cells[column] = word
        fixed.append(",".join(cells))
    (directory / "orders.csv").write_text("\n".join([header, *fixed]) + "\n")
    presale = load_events(directory)["orders"]["presale"]
    assert [None if pd.isna(v) else bool(v) for v in presale] == [True, False, True, None]


def test_pyarrow_backed_frames_validate_like_classic_ones() -> None:
    classic = validate_events(tiny_tables())
    arrow_tables = {}
    for name, frame in tiny_tables().items():
        converted = frame.convert_dtypes(dtype_backend="pyarrow")
        for column in TABLES[name].columns:
            if column.kind == "time" and column.name in converted:
                parsed = pd.to_datetime(frame[column.name], utc=True)
                converted[column.name] = parsed.astype("timestamp[us, tz=UTC][pyarrow]")
        arrow_tables[name] = converted
    arrow = validate_events(arrow_tables)
    for name in TABLES:
        pd.testing.assert_frame_equal(arrow[name], classic[name], check_exact=True)


def test_timestamps_outside_the_nanosecond_range_are_errors() -> None:
    created = ["2026-01-01", "2300-01-01", "2026-01-01", "2026-01-02"]
    error = _raise(with_column(required_only(), "orders", "created_at", created))
    assert (error.table, error.column) == ("orders", "created_at")
    assert error.sample["created_at"].tolist() == ["2300-01-01"]


def test_extra_columns_and_unknown_tables_are_ignored() -> None:
    tables = required_only()
    tables["orders"] = tables["orders"].assign(coupon_code=["x", "y", "z", "w"])
    tables["clicks_v2"] = pd.DataFrame({"anything": [1]})
    events = validate_events(tables)
    assert "coupon_code" not in events["orders"].columns
    assert "clicks_v2" not in events.tables


def test_absent_optional_columns_are_null_typed_and_recorded() -> None:
    tables = required_only()
    tables["orders"] = tables["orders"].drop(columns=["shipped_at", "status"])
    events = validate_events(tables)
    assert events["orders"]["shipped_at"].isna().all()
    assert str(events["orders"]["shipped_at"].dtype) == "datetime64[ns, UTC]"
    assert isinstance(events["orders"]["status"].dtype, pd.CategoricalDtype)
    assert events.missing_columns["orders"] == ("status", "shipped_at")
    assert any("orders" in w and "shipped_at" in w for w in events.warnings)


def test_missing_optional_tables_are_empty_with_schema_and_listed() -> None:
    events = validate_events(required_only())
    assert set(events.missing) == set(TABLES) - {"merchants", "orders"}
    for name in events.missing:
        frame = events[name]
        assert frame.empty
        assert list(frame.columns) == list(TABLES[name].column_names)
        assert frame.dtypes.to_dict() == table_dtypes(name)
        assert not events.has(name)
    assert events.has("orders")
    pd.testing.assert_frame_equal(events["reviews"], empty_table("reviews"))


def test_unknown_references_are_warnings_not_errors() -> None:
    tables = tiny_tables()
    tables["orders"] = tables["orders"].assign(merchant_id=["m1", "m1", "ghost", "ghost"])
    tables["after_sales"] = tables["after_sales"].assign(order_id=["o1", "o404"])
    events = validate_events(tables)
    merchant_warning = [w for w in events.warnings if w.startswith("orders.merchant_id")]
    assert len(merchant_warning) == 1
    assert "2 of 4 rows" in merchant_warning[0] and "'ghost'" in merchant_warning[0]
    assert any(w.startswith("after_sales.order_id") and "o404" in w for w in events.warnings)
    assert len(events["orders"]) == 4


def test_references_into_a_missing_table_are_not_warned() -> None:
    events = validate_events(required_only())
    # orders.creator_id points at creators, which is absent: no signal, nothing to warn about.
    assert not any(w.startswith("orders.creator_id") for w in events.warnings)


def test_resolution_without_its_time_is_warned() -> None:
    tables = tiny_tables()
    tables["after_sales"] = tables["after_sales"].assign(resolved_at=[None, None])
    events = validate_events(tables)
    assert any(w.startswith("after_sales.outcome") for w in events.warnings)


# --------------------------------------------------------------------------- errors


def _raise(tables: dict[str, pd.DataFrame]) -> SchemaError:
    with pytest.raises(SchemaError) as caught:
        validate_events(tables)
    return caught.value


@pytest.mark.parametrize(
    ("table", "column", "values", "bad_value", "got_fragment"),
    [
        ("orders", "status", ["paid", "shipped", "paid", "paid"], "shipped", "'shipped'"),
        ("orders", "amount", [1.0, -3.0, 2.0, 4.0], -3.0, "out of range"),
        ("orders", "amount", ["1", "ten", "2", "3"], "ten", "not a number"),
        ("orders", "amount", [1.0, np.inf, 2.0, 4.0], np.inf, "infinite"),
        ("orders", "created_at", ["2026-01-01", "yesterday", "2026-01-02", "2026-01-03"], "yesterday", "ISO 8601"),
        ("orders", "presale", ["true", "maybe", "false", ""], "maybe", "true/false"),
        ("orders", "presale", [1, 2, 0, 1], 2, "true/false/1/0"),
        ("orders", "presale", np.array([1.0, 2.0, 0.0, 1.0]), 2.0, "other than 0/1"),
        ("orders", "user_id", ["u1", None, "u2", "u3"], None, "null"),
        ("orders", "order_id", ["o1", "", "o2", "o3"], "", "null"),
        ("reviews", "rating", [6, 5], 6, "out of range"),
        ("reviews", "rating", [0, 5], 0, "out of range"),
        ("reviews", "rating", [4.5, 5], 4.5, "non-integer"),
        ("reviews", "quality", [2.5, None], 2.5, "non-integer"),
        ("violations", "severity", [4], 4, "out of range"),
        ("violations", "penalty", ["jail"], "jail", "'jail'"),
        ("nps", "score", [11, 3], 11, "out of range"),
        ("impressions", "position", [1, 0, 1], 0, "out of range"),
        ("impressions", "watch_seconds", [1.0, -1.0, 0.0], -1.0, "out of range"),
        ("after_sales", "type", ["return", "swap"], "swap", "'swap'"),
        ("after_sales", "reason", ["quality", "bored"], "bored", "'bored'"),
        ("after_sales", "outcome", ["buyer_favor", "draw"], "draw", "'draw'"),
        ("reports", "category", ["spam"], "spam", "'spam'"),
        ("guarantees", "benefit", ["return_freight", "free_lunch", "fast_refund"], "free_lunch", "'free_lunch'"),
    ],
)
def test_bad_values_raise_schema_error_naming_table_column_and_rows(
    table: str, column: str, values: list[object], bad_value: object, got_fragment: str
) -> None:
    error = _raise(with_column(tiny_tables(), table, column, values))
    assert (error.table, error.column) == (table, column)
    assert got_fragment in error.got
    assert f"{table}.{column}" in str(error)
    assert isinstance(error.sample, pd.DataFrame)
    assert 1 <= len(error.sample) <= 5
    assert column in error.sample.columns
    shown = error.sample[column].tolist()
    if bad_value is None:
        assert pd.isna(shown[0])
    elif bad_value == "":
        assert shown == [""]
    else:
        assert shown == [bad_value]


@pytest.mark.parametrize("values", [[1, 2, 3, 4], np.arange(4), np.linspace(1e9, 2e9, 4)])
def test_numbers_in_a_timestamp_column_are_rejected(values: list[int] | np.ndarray) -> None:
    # Epoch numbers are ambiguous (seconds? milliseconds?): refuse rather than guess.
    error = _raise(with_column(required_only(), "orders", "created_at", values))
    assert (error.table, error.column) == ("orders", "created_at")
    assert "not timestamps" in error.got
    assert len(error.sample) == 4


def test_bad_enum_as_category_dtype_is_caught() -> None:
    tables = required_only()
    tables["orders"] = tables["orders"].assign(
        status=pd.Categorical(["paid", "refunded", "paid", "paid"])
    )
    error = _raise(tables)
    assert (error.table, error.column) == ("orders", "status")
    assert "refunded" in error.got


def test_missing_required_column_names_it_and_what_was_found() -> None:
    tables = required_only()
    tables["orders"] = tables["orders"].drop(columns=["amount"])
    error = _raise(tables)
    assert (error.table, error.column) == ("orders", "amount")
    assert "order_id" in error.got  # lists the columns that were there


def test_missing_required_table() -> None:
    error = _raise({"merchants": tiny_tables()["merchants"]})
    assert (error.table, error.column) == ("orders", None)


def test_duplicate_primary_key_reports_all_copies() -> None:
    tables = required_only()
    tables["orders"] = tables["orders"].assign(order_id=["o1", "o2", "o1", "o4"])
    error = _raise(tables)
    assert (error.table, error.column) == ("orders", "order_id")
    assert error.sample["order_id"].tolist() == ["o1", "o1"]


def test_duplicate_composite_key() -> None:
    tables = tiny_tables()
    follows = tables["follows"]
    tables["follows"] = pd.concat([follows, follows.iloc[[0]]], ignore_index=True)
    error = _raise(tables)
    assert (error.table, error.column) == ("follows", "user_id, creator_id, followed_at")
    assert len(error.sample) == 2
    # the same user following the same creator twice at different times is fine
    again = follows.iloc[[0]].assign(followed_at=["2026-01-09T00:00:00Z"])
    tables["follows"] = pd.concat([follows, again], ignore_index=True)
    assert len(validate_events(tables)["follows"]) == 3


def test_sample_is_capped_at_five_rows() -> None:
    n = 12
    tables = required_only()
    tables["orders"] = pd.DataFrame(
        {
            "order_id": [f"o{i}" for i in range(n)],
            "user_id": ["u1"] * n,
            "merchant_id": ["m1"] * n,
            "created_at": ["2026-01-05"] * n,
            "amount": [-1.0] * n,
        }
    )
    error = _raise(tables)
    assert len(error.sample) == 5
    assert "12 values" in error.got


def test_repeated_column_name_is_a_schema_error() -> None:
    tables = required_only()
    orders = tables["orders"]
    tables["orders"] = pd.concat([orders, orders[["amount"]]], axis=1)
    error = _raise(tables)
    assert (error.table, error.column) == ("orders", "amount")


def test_non_dataframe_table_is_a_schema_error() -> None:
    tables: dict[str, object] = dict(required_only())
    tables["orders"] = [{"order_id": "o1"}]
    with pytest.raises(SchemaError, match="DataFrame"):
        validate_events(tables)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- files


def test_parquet_and_csv_load_to_identical_frames(tmp_path: Path) -> None:
    tables = tiny_tables()
    csv_dir = write_csv_dir(tables, tmp_path / "csv")
    parquet_dir = tmp_path / "parquet"
    write_events(tables, parquet_dir)
    from_csv, from_parquet = load_events(csv_dir), load_events(parquet_dir)
    assert sorted(p.name for p in parquet_dir.iterdir() if p.name != OUTPUT_MARKER) == sorted(f"{n}.parquet" for n in TABLES)
    for name in TABLES:
        pd.testing.assert_frame_equal(from_csv[name], from_parquet[name], check_exact=True)
    assert from_csv.missing == from_parquet.missing == ()


def test_parquet_is_preferred_over_csv(tmp_path: Path) -> None:
    tables = required_only()
    directory = tmp_path / "both"
    write_events(tables, directory)
    changed = tables["orders"].assign(amount=[1.0, 2.0, 3.0, 4.0])
    changed.to_csv(directory / "orders.csv", index=False)
    events = load_events(directory)
    assert events["orders"]["amount"].tolist() == tables["orders"]["amount"].tolist()
    assert any("orders.parquet" in w for w in events.warnings)


def test_load_reports_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_events(tmp_path / "nowhere")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        load_events(a_file)


def test_load_missing_required_table_file(tmp_path: Path) -> None:
    directory = write_csv_dir({"merchants": tiny_tables()["merchants"]}, tmp_path / "d")
    with pytest.raises(SchemaError) as caught:
        load_events(directory)
    assert caught.value.table == "orders"
    assert "orders.parquet or orders.csv" in caught.value.expected


def test_load_unreadable_files_are_schema_errors(tmp_path: Path) -> None:
    directory = write_csv_dir(required_only(), tmp_path / "d")
    (directory / "orders.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(SchemaError) as caught:
        load_events(directory)
    assert caught.value.table == "orders"
    (directory / "orders.parquet").unlink()
    (directory / "merchants.csv").write_text("")
    with pytest.raises(SchemaError) as caught:
        load_events(directory)
    assert caught.value.table == "merchants"


def test_malformed_csv_row_is_a_schema_error(tmp_path: Path) -> None:
    directory = write_csv_dir(required_only(), tmp_path / "d")
    with (directory / "orders.csv").open("a") as handle:
        handle.write("o9,u9,m1,2026-01-11T00:00:00Z,1.0,paid,EXTRA,,,,,,,\n")
    with pytest.raises(SchemaError) as caught:
        load_events(directory)
    assert (caught.value.table, caught.value.column) == ("orders", None)
    assert "csv" in caught.value.expected


def test_validation_is_idempotent() -> None:
    events = validate_events(tiny_tables())
    again = validate_events(dict(events.tables))
    for name in TABLES:
        pd.testing.assert_frame_equal(again[name], events[name], check_exact=True)
    assert again.warnings == events.warnings


def test_csv_header_only_table_is_present_but_empty(tmp_path: Path) -> None:
    tables = tiny_tables()
    tables["reviews"] = tables["reviews"].iloc[:0]
    events = load_events(write_csv_dir(tables, tmp_path / "d"))
    assert "reviews" not in events.missing
    assert events["reviews"].empty
    assert events["reviews"].dtypes.to_dict() == table_dtypes("reviews")


def test_write_load_round_trip_keeps_values_dtypes_and_missing(tmp_path: Path) -> None:
    events = validate_events({**required_only(), "reviews": tiny_tables()["reviews"]})
    write_events(events, tmp_path / "out")
    again = load_events(tmp_path / "out")
    assert again.missing == events.missing
    for name in TABLES:
        pd.testing.assert_frame_equal(again[name], events[name], check_exact=True)


def test_a_point_in_time_cut_can_be_written_and_read_back(tmp_path: Path) -> None:
    cut = validate_events(tiny_tables()).before("2026-01-09")
    write_events(cut, tmp_path / "cut")
    again = load_events(tmp_path / "cut")
    for name in TABLES:
        pd.testing.assert_frame_equal(again[name], cut[name], check_exact=True)


def test_write_revalidates_an_event_log_that_was_changed(tmp_path: Path) -> None:
    events = validate_events(required_only())
    events["orders"].loc[0, "amount"] = -5.0  # frames inside an EventLog are still mutable
    with pytest.raises(SchemaError, match="orders.amount"):
        write_events(events, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_write_replaces_directory_and_leaves_later_files_alone(tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError):  # a directory trustfeed did not write is never replaced
        write_events(required_only(), out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    (out / "notes.txt").unlink()
    write_events(required_only(), out)
    (out / "stale.parquet").write_text("old")
    write_events(required_only(), out)  # an earlier output of the same writer is replaced whole
    assert not (out / "stale.parquet").exists()
    (out / "truth").mkdir()
    pd.DataFrame({"merchant_id": ["m1"], "latent_trust": [0.9]}).to_parquet(out / "truth" / "merchants.parquet")
    events = load_events(out)
    assert len(events["merchants"]) == 3
    assert (out / "truth" / "merchants.parquet").exists()


def test_write_invalid_or_unknown_table_leaves_existing_output_untouched(tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    write_events(required_only(), out)
    snapshot = sorted(p.name for p in out.iterdir())
    bad = with_column(required_only(), "orders", "amount", [1.0, -1.0, 1.0, 1.0])
    with pytest.raises(SchemaError):
        write_events(bad, out)
    with pytest.raises(SchemaError, match="unknown table"):
        write_events({**required_only(), "order": required_only()["orders"]}, out)
    assert sorted(p.name for p in out.iterdir()) == snapshot
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------- before / span / summary


def test_before_keeps_rows_strictly_before_t_and_masks_later_resolutions() -> None:
    events = validate_events(tiny_tables())
    cut = events.before("2026-01-09T00:00:00Z")
    assert cut["orders"]["order_id"].tolist() == ["o1", "o2", "o3"]  # o4 is created on the 10th
    shipped = dict(zip(cut["orders"]["order_id"], cut["orders"]["shipped_at"], strict=True))
    assert shipped["o1"] == pd.Timestamp("2026-01-06", tz=UTC)
    assert pd.isna(shipped["o3"])  # shipped exactly at t: not known yet
    assert cut["orders"]["delivered_at"].notna().tolist() == [True, False, False]
    assert cut["after_sales"].empty  # a1 is opened exactly at t
    guarantees = cut["guarantees"]
    assert guarantees["left_at"].isna().all()  # m1 leaves fast_refund exactly at t
    assert len(guarantees) == 3
    assert cut["merchants"]["merchant_id"].tolist() == ["m1", "m2"]
    assert pd.isna(cut["livestreams"]["ended_at"]).tolist() == [False, True]
    assert cut["reviews"].empty and len(cut["violations"]) == 1 and len(cut["nps"]) == 1


def test_before_masks_outcome_until_resolved() -> None:
    events = validate_events(tiny_tables())
    cases = events.before("2026-01-11").tables["after_sales"]
    assert cases["case_id"].tolist() == ["a1", "a2"]
    assert cases["outcome"].isna().all() and cases["resolved_at"].isna().all()
    assert isinstance(cases["outcome"].dtype, pd.CategoricalDtype)
    cases = events.before("2026-01-12T00:00:01").tables["after_sales"]
    assert cases["outcome"].tolist()[0] == "buyer_favor"


def test_before_keeps_dtypes_missing_and_warnings_and_does_not_touch_the_original() -> None:
    tables = required_only()
    tables["orders"] = tables["orders"].assign(merchant_id=["m1", "m1", "m2", "ghost"])
    events = validate_events(tables)
    original = {name: frame.copy() for name, frame in events.tables.items()}
    cut = events.before(pd.Timestamp("2026-01-06 10:00"))  # naive: taken as UTC
    assert cut.missing == events.missing and cut.warnings == events.warnings
    for name in TABLES:
        assert cut[name].dtypes.to_dict() == table_dtypes(name)
        pd.testing.assert_frame_equal(events[name], original[name])
    assert cut["orders"]["order_id"].tolist() == ["o1", "o2"]


_DAY0 = pd.Timestamp("2026-01-01", tz=UTC)


@st.composite
def _orders_and_cuts(draw: st.DrawFn) -> tuple[pd.DataFrame, pd.Timestamp, pd.Timestamp]:
    n = draw(st.integers(min_value=1, max_value=30))
    created_hours = draw(st.lists(st.integers(0, 24 * 20), min_size=n, max_size=n))
    ship_delay = draw(st.lists(st.one_of(st.none(), st.integers(0, 24 * 5)), min_size=n, max_size=n))
    created = [_DAY0 + pd.Timedelta(hours=h) for h in created_hours]
    shipped = [None if d is None else c + pd.Timedelta(hours=d) for c, d in zip(created, ship_delay, strict=True)]
    orders = pd.DataFrame(
        {
            "order_id": [f"o{i}" for i in range(n)],
            "user_id": "u",
            "merchant_id": "m1",
            "created_at": created,
            "amount": 1.0,
            "shipped_at": pd.Series(shipped, dtype=object),
        }
    )
    first, second = sorted(draw(st.lists(st.integers(0, 24 * 26), min_size=2, max_size=2)))
    return orders, _DAY0 + pd.Timedelta(hours=first), _DAY0 + pd.Timedelta(hours=second)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_orders_and_cuts())
def test_before_is_a_point_in_time_cut(case: tuple[pd.DataFrame, pd.Timestamp, pd.Timestamp]) -> None:
    orders, early, late = case
    merchants = pd.DataFrame({"merchant_id": ["m1"], "registered_at": [_DAY0]})
    events = validate_events({"merchants": merchants, "orders": orders})
    cut = events.before(late)["orders"]
    # exactly the orders created before the cut, and no resolution from the future
    expected_ids = orders.loc[pd.to_datetime(orders["created_at"], utc=True) < late, "order_id"]
    assert sorted(cut["order_id"].tolist()) == sorted(expected_ids.tolist())
    assert (cut["created_at"] < late).all()
    assert (cut["shipped_at"].dropna() < late).all()
    known_shipped = cut["shipped_at"].notna().sum()
    truly_shipped = (events["orders"]["created_at"] < late) & (events["orders"]["shipped_at"] < late)
    assert known_shipped == truly_shipped.sum()
    # cutting twice is the same as cutting once at the earlier time
    twice = events.before(late).before(early)["orders"]
    pd.testing.assert_frame_equal(twice, events.before(early)["orders"])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_orders_and_cuts(), st.booleans())
def test_before_of_a_time_ordered_table_equals_the_row_filter(
    case: tuple[pd.DataFrame, pd.Timestamp, pd.Timestamp], in_time_order: bool
) -> None:
    # a log in event-time order is cut by a slice of its first rows, any other by a row
    # filter: both give the filtered rows with a fresh index, and neither touches the log
    orders, _, late = case
    if in_time_order:
        orders = orders.sort_values("created_at", kind="stable").reset_index(drop=True)
    merchants = pd.DataFrame({"merchant_id": ["m1"], "registered_at": [_DAY0]})
    events = validate_events({"merchants": merchants, "orders": orders})
    original = events["orders"].copy()
    cut = events.before(late)["orders"]
    full = events["orders"]
    expected = full.loc[(full["created_at"] < late).to_numpy()].reset_index(drop=True)
    expected["shipped_at"] = expected["shipped_at"].where(expected["shipped_at"] < late)
    pd.testing.assert_frame_equal(cut, expected)
    pd.testing.assert_frame_equal(events["orders"], original)


def test_span_and_empty_span() -> None:
    events = validate_events(tiny_tables())
    assert events.span() == (pd.Timestamp("2026-01-05T10:30", tz=UTC), pd.Timestamp("2026-01-10T08:00", tz=UTC))
    empty = events.before("2026-01-01")
    with pytest.raises(SchemaError, match="orders.created_at"):
        empty.span()
    assert "event log" in empty.summary()


def test_summary_lists_rows_missing_tables_and_warnings() -> None:
    tables = required_only()
    tables["orders"] = tables["orders"].assign(merchant_id=["m1", "m1", "m2", "ghost"])
    text = validate_events(tables).summary()
    lines = text.splitlines()
    assert any(line.split()[:2] == ["orders", "4"] for line in lines)
    assert any(line.split()[:2] == ["merchants", "3"] for line in lines)
    assert any(line.split()[:2] == ["reviews", "missing"] for line in lines)
    assert "missing optional tables: creators" in text
    assert any("orders.merchant_id" in line and "ghost" in line for line in lines)
    assert "2026-01-05T10:30:00+00:00" in text


def test_event_log_is_immutable_and_complete() -> None:
    events = validate_events(required_only())
    with pytest.raises(TypeError):
        events.tables["orders"] = pd.DataFrame()  # type: ignore[index]
    with pytest.raises(AttributeError):
        events.missing = ()  # type: ignore[misc]
    with pytest.raises(KeyError, match="no table"):
        events["order"]
    with pytest.raises(SchemaError):
        EventLog({"merchants": events["merchants"]})


def test_to_utc() -> None:
    assert to_utc("2026-01-01T08:00:00+08:00") == pd.Timestamp("2026-01-01", tz=UTC)
    assert to_utc(pd.Timestamp("2026-01-01")).tz is not None
    with pytest.raises(ConfigError):
        to_utc("not a time")
    with pytest.raises(ConfigError):
        to_utc(None)


def test_user_documentation_covers_every_table_column_and_enum_value() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "schema.md").read_text()
    for name, spec in TABLES.items():
        assert f"### `{name}`" in text, name
        for column in spec.columns:
            assert f"| `{column.name}` |" in text, f"{name}.{column.name}"
            for value in column.categories:
                assert f"`{value}`" in text, f"{name}.{column.name}={value}"
