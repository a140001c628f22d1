import re

import pytest

from datesync.daemon.db.queries import all_queries, parse, q


def test_parse_names_blocks_and_drops_description_lines() -> None:
    text = "-- header text\n-- name: a_get\n-- Reads a.\nSELECT 1;\n\n-- name: b_put\nUPDATE b SET x = 1;\n"
    assert parse(text) == {"a_get": "SELECT 1", "b_put": "UPDATE b SET x = 1"}


def test_parse_rejects_duplicates_and_empty_blocks() -> None:
    with pytest.raises(ValueError, match="twice"):
        parse("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")
    with pytest.raises(ValueError, match="empty"):
        parse("-- name: a\n-- only a description\n")


def test_shipped_queries_load_and_follow_the_naming_rule() -> None:
    queries = all_queries()
    assert {"batch_insert", "task_claim", "task_finish", "event_log_tasks"} <= set(queries)
    for name in queries:
        assert "_" in name, name  # entity_verb
    with pytest.raises(KeyError, match="no query named"):
        q("nope")


def test_a_query_that_calls_a_function_has_its_name() -> None:
    """A query that is a call of one of our SQL functions is named after it: grep finds both at once."""
    calls = re.compile(r"(?:FROM|SELECT)\s+datesync\.(\w+)\(")
    for name, sql in all_queries().items():
        called = calls.findall(sql)
        if len(called) == 1 and sql.lstrip().upper().startswith("SELECT") and "JOIN" not in sql.upper():
            assert name == called[0], f"query {name} calls datesync.{called[0]}"


def test_no_two_queries_are_the_same_statement() -> None:
    seen: dict[str, str] = {}
    for name, sql in all_queries().items():
        text = " ".join(sql.split())
        assert text not in seen, f"{name} repeats {seen.get(text)}"
        seen[text] = name
