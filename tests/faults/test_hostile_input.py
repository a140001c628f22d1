"""Hostile input: the HTTP corpus against a real web process, and bad operator statements against the SQL
interface. (schemathesis drives the OpenAPI description in tests/e2e/test_api_openapi.py.)"""

from __future__ import annotations

from tests.faults import abuse, corpus
from tests.faults.common import SUITE


async def test_the_http_corpus_gets_clear_4xx_answers_and_leaves_nothing_behind(dsn: str, seed: int) -> None:
    fig = await abuse.hostile_http(dsn, seed, SUITE)
    assert not fig.problems, fig.failure()
    assert fig.http_5xx == 0 and fig.bad_inputs >= len(list(corpus.http_cases()))


async def test_bad_operator_statements_are_refused_naming_the_rule(dsn: str, seed: int) -> None:
    fig = await abuse.hostile_sql(dsn, seed, SUITE)
    assert not fig.problems, fig.failure()


async def test_operator_edits_cannot_fake_a_batch_state_or_its_counts(dsn: str, seed: int) -> None:
    """Engine bug (reported): an INSERT with state 'running' or 'succeeded', or with counts, and an UPDATE of the
    counts are accepted; such a batch ends 'succeeded' with no date run, or never ends."""
    fig = await abuse.forged_sql(dsn, seed, SUITE)
    assert not fig.problems, fig.failure()


async def test_a_retry_with_the_same_idempotency_key_never_creates_a_second_batch(dsn: str, seed: int) -> None:
    """Engine bug (reported): a keyed request answered with a de-duplicated batch does not record its key, so its
    retry after that batch ended creates a new batch."""
    fig = await abuse.idempotent_retry(dsn, seed, SUITE)
    assert not fig.problems, fig.failure()
