# ruff: noqa: RUF001  (Chinese punctuation and full-width digits are meant)
"""The batch request rules, without a database or a server."""

from __future__ import annotations

import datetime
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datesync.daemon.ops.problems import OperationError
from datesync.daemon.ops.validation import (
    MIN_DATE,
    BatchRequest,
    Limits,
    idempotency_key,
    parse_json_object,
    validate_batch,
)
from datesync.web.api.params import batch_id

TODAY = datetime.date(2025, 10, 10)
LIMITS = Limits(TODAY, "Asia/Shanghai", 31)


def refused(body: object, limits: Limits = LIMITS) -> OperationError:
    with pytest.raises(OperationError) as caught:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        validate_batch(parse_json_object(raw), limits)
    return caught.value


def fields(error: OperationError) -> list[str]:
    return [e.field for e in error.errors]


def english(error: OperationError) -> list[str]:
    return [e.msg.render("en") for e in error.errors]


def test_a_good_body_gives_a_request_with_defaults() -> None:
    body = {"start_date": "2025-10-01", "end_date": "2025-10-10"}
    assert validate_batch(body, LIMITS) == BatchRequest(datetime.date(2025, 10, 1), TODAY)
    full = validate_batch({**body, "force": True, "source": "shop-2", "dry_run": True}, LIMITS)
    assert (full.force, full.source, full.dry_run, full.days) == (True, "shop-2", True, 10)


@pytest.mark.parametrize(("raw", "status"), [
    (b"", 400), (b"   ", 400), (b"{", 400), (b"\xff\xfe", 400), (b"[]", 400), (b'"2025-10-01"', 400),
    (b"null", 400), (b"42", 400), (b'{"start_date": NaN}', 400), (b"[" * 5000 + b"]" * 5000, 400),
    (b'{"start_date": "2025-10-01", "start_date": "2025-10-02", "end_date": "2025-10-02"}', 422),
])
def test_bodies_that_are_not_one_json_object(raw: bytes, status: int) -> None:
    error = refused(raw)
    assert error.status == status
    assert fields(error) in (["body"], ["start_date"])


@pytest.mark.parametrize(("body", "field", "message"), [
    ({"end_date": "2025-10-01"}, "start_date", "start_date is required"),
    ({"start_date": None, "end_date": "2025-10-01"}, "start_date", "start_date is required"),
    ({"start_date": "2025-10-01"}, "end_date", "end_date is required"),
    ({"start_date": "2025/10/01", "end_date": "2025-10-01"}, "start_date", "YYYY-MM-DD"),
    ({"start_date": "20251001", "end_date": "2025-10-01"}, "start_date", "YYYY-MM-DD"),
    ({"start_date": 20251001, "end_date": "2025-10-01"}, "start_date", "YYYY-MM-DD"),
    ({"start_date": "2025-10-01", "end_date": "2025-10-1"}, "end_date", "YYYY-MM-DD"),
    ({"start_date": " 2025-10-01", "end_date": "2025-10-01"}, "start_date", "YYYY-MM-DD"),
    ({"start_date": "２０２５-10-01", "end_date": "2025-10-01"}, "start_date", "YYYY-MM-DD"),
    ({"start_date": "2025-02-30", "end_date": "2025-10-01"}, "start_date", "not a real calendar date"),
    ({"start_date": "2025-10-01", "end_date": "2025-13-01"}, "end_date", "not a real calendar date"),
    ({"start_date": "0001-01-01", "end_date": "2025-10-01"}, "start_date", "start_date must not be before 1000-01-01"),
    ({"start_date": "2025-10-05", "end_date": "2025-10-01"}, "start_date", "start_date must not be after end_date"),
    ({"start_date": "2025-01-01", "end_date": "2025-10-01"}, "end_date", "the range is 274 days; the limit is 31 days"),
    ({"start_date": "2025-10-10", "end_date": "2025-10-11"}, "end_date",
     "end_date 2025-10-11 is in the future (today is 2025-10-10 in Asia/Shanghai)"),
    ({"start_date": "2025-10-01", "end_date": "2025-10-01", "force": "true"}, "force", "force must be true or false"),
    ({"start_date": "2025-10-01", "end_date": "2025-10-01", "force": 1}, "force", "force must be true or false"),
    ({"start_date": "2025-10-01", "end_date": "2025-10-01", "force": None}, "force", "force must be true or false"),
    ({"start_date": "2025-10-01", "end_date": "2025-10-01", "dry_run": 0}, "dry_run", "true or false"),
    ({"start_date": "2025-10-01", "end_date": "2025-10-01", "source": 3}, "source", "source must be a string"),
    ({"start_date": "2025-10-01", "end_date": "2025-10-01", "source": "No Such"}, "source",
     'unknown source "No Such"'),
    ({"start_date": "2025-10-01", "end_date": "2025-10-01", "extra": 1}, "extra", 'unknown field "extra"'),
])
def test_each_bad_field_is_named_with_a_clear_message(body: dict[str, object], field: str, message: str) -> None:
    error = refused(body)
    assert error.status == 422
    assert fields(error) == [field]
    assert message in english(error)[0]


def test_every_problem_is_reported_at_once_and_in_chinese_too() -> None:
    error = refused({"start_date": "x", "end_date": 5, "force": "no", "zzz": 1})
    assert fields(error) == ["zzz", "start_date", "end_date", "force"]
    body = error.body("zh")
    assert body["status"] == "error"
    assert body["errors"][1] == {"field": "start_date",
                                 "message": "start_date 必须是 YYYY-MM-DD 格式的日期，例如 2025-10-01"}
    assert body["message"].count("；") == 3


def test_the_future_and_the_range_limit_are_both_reported() -> None:
    error = refused({"start_date": "2025-01-01", "end_date": "2025-12-31"})
    assert fields(error) == ["end_date", "end_date"]


@settings(max_examples=200, database=None)
@given(st.one_of(st.text(max_size=20), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
                 st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)))
def test_any_value_that_is_not_an_iso_date_is_refused_for_its_field(value: object) -> None:
    if isinstance(value, str) and len(value) == 10:
        try:
            if datetime.date.fromisoformat(value).isoformat() == value:
                return
        except ValueError:
            pass
    error = refused({"start_date": "2025-10-01", "end_date": value})
    assert error.status == 422 and fields(error) == ["end_date"]


@settings(max_examples=200, database=None)
@given(st.dates(), st.dates())
def test_real_dates_are_accepted_exactly_when_the_range_rules_allow(start: datetime.date,
                                                                      end: datetime.date) -> None:
    body = {"start_date": start.isoformat(), "end_date": end.isoformat()}
    ok = MIN_DATE <= start <= end and (end - start).days < LIMITS.max_range_days and end <= TODAY
    if ok:
        assert validate_batch(body, LIMITS).days == (end - start).days + 1
    else:
        assert refused(body).status == 422


@settings(max_examples=200, database=None)
@given(st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", fullmatch=True))
def test_well_formed_strings_are_either_real_dates_or_named_impossible(value: str) -> None:
    try:
        real = datetime.date.fromisoformat(value)
    except ValueError:
        real = None
    body = {"start_date": value, "end_date": value}
    if real is not None and MIN_DATE <= real <= TODAY:
        assert validate_batch(body, LIMITS).start_date == real
    elif real is None:
        assert "not a real calendar date" in english(refused(body))[0]
    elif real < MIN_DATE:
        assert english(refused(body))[0] == "start_date must not be before 1000-01-01"


def test_idempotency_key_header() -> None:
    assert idempotency_key(None) is None
    assert idempotency_key("  abc-123 ") == "abc-123"
    for bad in ("", "   ", "a" * 256, "caf\u00e9", "a\x00b"):
        with pytest.raises(OperationError) as caught:
            idempotency_key(bad)
        assert caught.value.status == 422 and fields(caught.value) == ["Idempotency-Key"]


@pytest.mark.parametrize("raw", ["abc", "-1", "0", "1.5", "9223372036854775808", "99999999999999999999", "１"])
def test_path_ids_that_cannot_be_a_batch_are_not_found(raw: str) -> None:
    with pytest.raises(OperationError) as caught:
        batch_id(raw)
    assert caught.value.status == 404 and fields(caught.value) == ["id"]
    assert batch_id("9223372036854775807") == 2**63 - 1
