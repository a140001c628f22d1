from datesync.daemon.db import dsn


def test_neon_pooler_becomes_direct() -> None:
    pooled = "postgresql://u:p@ep-cool-name-123456-pooler.eu-central-1.aws.neon.tech/db?sslmode=require"
    assert dsn.is_pooler(pooled)
    direct = dsn.direct_from(pooled)
    assert direct == "postgresql://u:p@ep-cool-name-123456.eu-central-1.aws.neon.tech/db?sslmode=require"
    assert not dsn.is_pooler(direct)


def test_plain_url_is_its_own_direct_url() -> None:
    url = "postgresql://u:p@db.internal:5432/app"
    assert dsn.direct_from(url) == url and not dsn.is_pooler(url)


def test_channel_binding_is_dropped_and_sslmode_kept() -> None:
    cleaned = dsn.clean("postgresql://u:p@h/db?sslmode=require&channel_binding=require")
    assert cleaned == "postgresql://u:p@h/db?sslmode=require"


def test_redact_hides_the_password() -> None:
    assert dsn.redact("postgresql://u:s3cret@h/db") == "postgresql://u:***@h/db"
    assert dsn.redact("postgresql://u@h/db") == "postgresql://u@h/db"


def test_auto_treats_database_url_as_a_pooler_when_it_differs_from_the_direct_url() -> None:
    bouncer = "postgresql://u:p@pgbouncer.internal:6432/app"
    direct = "postgresql://u:p@db.internal:5432/app"
    neon = "postgresql://u:p@ep-x-1-pooler.eu-central-1.aws.neon.tech/db"
    assert dsn.decide_pooled("auto", bouncer, direct)
    assert dsn.decide_pooled("auto", neon, dsn.direct_from(neon))
    assert not dsn.decide_pooled("auto", direct, direct)
    assert dsn.decide_pooled("on", direct, direct) and not dsn.decide_pooled("off", bouncer, direct)


def test_a_dsn_recorded_as_pooled_is_pooled_for_every_later_connection() -> None:
    url = "postgresql://u:p@pooler.test-recorded.internal:6543/app"
    assert not dsn.is_pooled(url)
    dsn.mark_pooled(url)
    assert dsn.is_pooled(url) and not dsn.is_pooled(url.replace("6543", "5432"))
