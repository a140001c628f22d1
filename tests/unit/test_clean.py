"""The boundary every handler product crosses (daemon/sync/clean.py): valid, printable, bounded, scrubbed."""

from __future__ import annotations

import base64
import time

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datesync.daemon.sync.clean import TEXT_LIMIT, clean_text, error_text, progress_note, progress_value, row_count
from datesync.daemon.sync.outcome import Kind, Outcome, fallbacks, retry_may_cure


@given(st.text(alphabet=st.characters(exclude_categories=()), max_size=3000))  # lone surrogates too
@settings(max_examples=300, deadline=None)
def test_any_text_comes_out_storable_and_printable(text: str) -> None:
    out = clean_text(text)
    out.encode("utf-8")  # no lone surrogate
    assert "\x00" not in out and len(out.encode()) <= TEXT_LIMIT
    assert not any(ord(ch) < 32 and ch not in "\t\n" for ch in out)
    assert not any(0x7F <= ord(ch) <= 0x9F for ch in out)


def test_nul_is_dropped_and_controls_replaced() -> None:
    assert clean_text("x\x00y") == "xy"
    assert clean_text("a\x1b[31mb\tc\nd") == "a\ufffd[31mb\tc\nd"
    assert clean_text("lone \udc80") == "lone \ufffd"


def test_a_long_text_is_cut_with_a_marker_and_quickly() -> None:
    started = time.perf_counter()
    out = clean_text("z" * 5_000_000)
    assert time.perf_counter() - started < 1.0
    kept = out[: out.index("…")]
    assert len(out.encode()) <= TEXT_LIMIT and out.endswith(f"… [{5_000_000 - len(kept)} characters cut]")


def test_basic_credentials_are_scrubbed_but_prose_is_not() -> None:
    token = base64.b64encode(b"alice:hunter2").decode()
    assert clean_text(f"Authorization: Basic {token}") == "Authorization: Basic ***"
    assert clean_text(f'{{"authorization": "basic {token}"}}').count(token) == 0
    assert clean_text("the basic settings") == "the basic settings"


def test_an_exception_whose_str_raises_still_has_a_text() -> None:
    class Odd(Exception):
        def __str__(self) -> str:
            raise ValueError("no")

    assert error_text(Odd()).startswith("Odd: ")


@pytest.mark.parametrize(("value", "expected"), [(None, None), (0, 0), (7, 7), (2**63 - 1, 2**63 - 1)])
def test_row_counts_in_range_pass(value: int | None, expected: int | None) -> None:
    assert row_count(value) == expected


@pytest.mark.parametrize("value", [True, 4.2, "3", [1], -1, 2**63, 10**5000],
                         ids=["bool", "float", "str", "list", "negative", "over_bigint", "huge"])
def test_row_counts_of_the_wrong_type_or_size_fail_the_attempt(value: object) -> None:
    with pytest.raises((TypeError, ValueError)) as caught:
        row_count(value)
    assert len(str(caught.value)) < 300


def test_progress_is_made_json_safe() -> None:
    assert progress_value(3) == 3 and progress_value(True) is None and progress_value(2**60) is None
    assert progress_value(float("nan")) is None
    assert progress_note("a\x00b") == "ab" and progress_note(b"x") == "(bytes)" and progress_note(None) is None


def test_only_refusals_of_the_data_are_not_retried() -> None:
    assert not retry_may_cure(asyncpg.CharacterNotInRepertoireError("0x00"))
    assert not retry_may_cure(asyncpg.DataError("out of int64 range"))
    assert retry_may_cure(asyncpg.AdminShutdownError("shutdown"))
    assert retry_may_cure(asyncpg.SerializationError("retry"))
    assert retry_may_cure(asyncpg.UniqueViolationError("claimed elsewhere"))
    assert retry_may_cure(ConnectionResetError())
    assert retry_may_cure(asyncpg.InterfaceError("connection is closed"))


def test_a_refused_outcome_falls_back_to_ascii_then_a_bare_failure() -> None:
    from datesync.daemon.settings import Settings

    outcome = Outcome(1, 2, Kind.FAILED, 1, error="caf\u00e9 \U0001f600", rows=None)
    tried = list(fallbacks(outcome, asyncpg.UntranslatableCharacterError("x"), None, Settings()))
    assert tried[0] == outcome
    assert tried[1].error == "caf\\xe9 \\U0001f600"
    assert tried[2].kind is Kind.FAILED and tried[2].error is not None
    assert tried[2].error.startswith("the outcome could not be recorded (UntranslatableCharacterError")
    assert list(fallbacks(Outcome(1, 2, Kind.RELEASED, 1), ValueError(), None, Settings())) == [
        Outcome(1, 2, Kind.RELEASED, 1)]
