-- datesync schema, version 1. Forward-only: never edit this file once released; add 0002_*.sql instead.

CREATE SCHEMA IF NOT EXISTS datesync;

-- batch.state
--   queued    : inserted (API, CLI, psql, schedule); a daemon moves it to running when it expands it.
--   running   : its tasks exist; the daemon that finishes its last task moves it to a final state.
--   succeeded : every date ended succeeded or skipped.
--   failed    : at least one date failed for good.
--   cancelled : cancel_requested was honoured before the batch ended.
CREATE TYPE datesync.batch_state AS ENUM ('queued', 'running', 'succeeded', 'failed', 'cancelled');

-- task.state
--   queued    : waiting for a daemon (new, retry backoff, handed back on shutdown, lease expired).
--   running   : leased by one daemon (lease_owner, lease_expires_at); at most one per (source, day).
--   succeeded : the handler returned.  failed: out of attempts.  skipped: the day was already synced.
--   cancelled : its batch was cancelled before it ended.
CREATE TYPE datesync.task_state AS ENUM ('queued', 'running', 'succeeded', 'failed', 'skipped', 'cancelled');

-- day.status: the latest outcome for one (source, day), what "is this date synced?" reads.
CREATE TYPE datesync.day_status AS ENUM ('running', 'success', 'failed');

-- Values the database needs to validate operator INSERTs the way the API does (written at every start).
CREATE TABLE datesync.setting (
    key   text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO datesync.setting (key, value) VALUES ('max_range_days', '3660'), ('timezone', 'UTC');

-- Configured sources; daemons register theirs at start so that psql INSERTs can name only known ones.
CREATE TABLE datesync.source (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    handler     text NOT NULL DEFAULT 'demo',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO datesync.source (name) VALUES ('default');

CREATE TABLE datesync.batch (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source           text NOT NULL DEFAULT 'default' REFERENCES datesync.source (name),
    start_date       date NOT NULL,
    end_date         date NOT NULL,
    force            boolean NOT NULL DEFAULT false,
    state            datesync.batch_state NOT NULL DEFAULT 'queued',
    cancel_requested boolean NOT NULL DEFAULT false,
    days             integer GENERATED ALWAYS AS (end_date - start_date + 1) STORED,
    -- Final counts, written when the batch ends; live counts are in datesync.batch_progress.
    succeeded        integer NOT NULL DEFAULT 0,
    failed           integer NOT NULL DEFAULT 0,
    skipped          integer NOT NULL DEFAULT 0,
    cancelled        integer NOT NULL DEFAULT 0,
    idempotency_key  text UNIQUE,
    requested_by     text NOT NULL DEFAULT 'sql',
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    CONSTRAINT batch_start_not_after_end CHECK (start_date <= end_date),
    -- A final state carries its finish time, an unfinished one none.
    CONSTRAINT batch_finished_when_final
        CHECK ((state IN ('succeeded', 'failed', 'cancelled')) = (finished_at IS NOT NULL)),
    CONSTRAINT batch_started_when_running CHECK (state NOT IN ('running', 'succeeded', 'failed')
                                                 OR started_at IS NOT NULL)
);
CREATE INDEX batch_unfinished ON datesync.batch (id) WHERE state IN ('queued', 'running');
CREATE INDEX batch_created ON datesync.batch (created_at DESC);

CREATE TABLE datesync.task (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    batch_id         bigint NOT NULL REFERENCES datesync.batch (id) ON DELETE CASCADE,
    source           text NOT NULL,
    day              date NOT NULL,
    force            boolean NOT NULL DEFAULT false,
    state            datesync.task_state NOT NULL DEFAULT 'queued',
    attempt          integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts     integer NOT NULL CHECK (max_attempts >= 1),
    run_after        timestamptz NOT NULL DEFAULT now(),
    lease_owner      text,
    lease_expires_at timestamptz,
    error            text,
    rows_synced      bigint,
    started_at       timestamptz,
    finished_at      timestamptz,
    UNIQUE (batch_id, day),
    -- Exactly the running tasks hold a lease.
    CONSTRAINT task_lease_iff_running
        CHECK ((state = 'running') = (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL)),
    CONSTRAINT task_finished_when_final
        CHECK ((state IN ('succeeded', 'failed', 'skipped', 'cancelled')) = (finished_at IS NOT NULL))
);
-- Invariant 2 in the database: at most one running sync of a (source, day), across batches and daemons.
CREATE UNIQUE INDEX task_one_running_per_day ON datesync.task (source, day) WHERE state = 'running';
-- Claiming reads the head of this index only: O(1) in the queue's size.
CREATE INDEX task_claimable ON datesync.task (run_after, id) WHERE state = 'queued';
CREATE INDEX task_lease_expiry ON datesync.task (lease_expires_at) WHERE state = 'running';
CREATE INDEX task_batch_unfinished ON datesync.task (batch_id) WHERE state IN ('queued', 'running');

CREATE TABLE datesync.day (
    source      text NOT NULL,
    day         date NOT NULL,
    status      datesync.day_status NOT NULL,
    batch_id    bigint,
    task_id     bigint,
    attempts    integer NOT NULL DEFAULT 0,
    rows_synced bigint,
    error       text,
    started_at  timestamptz,
    synced_at   timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, day),
    CONSTRAINT day_synced_at_when_success CHECK (status <> 'success' OR synced_at IS NOT NULL)
);
CREATE INDEX day_status ON datesync.day (status, day);

-- Append-only progress log that SSE replays. Ids are handed out in commit order (see event_serialize).
CREATE TABLE datesync.event (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    batch_id  bigint NOT NULL,
    task_id   bigint,
    day       date,
    kind      text NOT NULL CHECK (kind IN ('batch', 'task')),
    state     text NOT NULL,
    attempt   integer,
    error     text,
    data      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX event_batch ON datesync.event (batch_id, id);

-- Readers resume from "id > last seen". That is gapless only if ids become visible in order, so every
-- event-writing transaction takes this lock right before inserting events and holds it to commit; the
-- transactions that write events therefore commit in id order. Write events last in a transaction.
CREATE FUNCTION datesync.event_serialize() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(7355608, 1);
    RETURN NULL;
END $$;
CREATE TRIGGER event_serialize BEFORE INSERT ON datesync.event
    FOR EACH STATEMENT EXECUTE FUNCTION datesync.event_serialize();

-- One tiny NOTIFY per statement (and PostgreSQL folds identical ones per transaction); readers read rows.
CREATE FUNCTION datesync.event_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('datesync_event', '');
    RETURN NULL;
END $$;
CREATE TRIGGER event_notify AFTER INSERT ON datesync.event
    FOR EACH STATEMENT EXECUTE FUNCTION datesync.event_notify();

-- Operator INSERTs get the API's checks and wording. Raised as check_violation with the field in DETAIL.
CREATE FUNCTION datesync.batch_validate() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    max_days integer := coalesce(
        (SELECT value::integer FROM datesync.setting WHERE key = 'max_range_days'), 3660);
    zone text := coalesce((SELECT value FROM datesync.setting WHERE key = 'timezone'), 'UTC');
    today date := (now() AT TIME ZONE zone)::date;
BEGIN
    IF NEW.start_date IS NULL THEN
        RAISE EXCEPTION 'start_date is required' USING ERRCODE = 'not_null_violation', DETAIL = 'start_date';
    END IF;
    IF NEW.end_date IS NULL THEN
        RAISE EXCEPTION 'end_date is required' USING ERRCODE = 'not_null_violation', DETAIL = 'end_date';
    END IF;
    IF NEW.start_date > NEW.end_date THEN
        RAISE EXCEPTION 'start_date must not be after end_date'
            USING ERRCODE = 'check_violation', DETAIL = 'start_date';
    END IF;
    IF NEW.end_date - NEW.start_date + 1 > max_days THEN
        RAISE EXCEPTION 'the range is % days; the limit is % days', NEW.end_date - NEW.start_date + 1, max_days
            USING ERRCODE = 'check_violation', DETAIL = 'end_date';
    END IF;
    IF NEW.end_date > today THEN
        RAISE EXCEPTION 'end_date % is in the future (today is % in %)', NEW.end_date, today, zone
            USING ERRCODE = 'check_violation', DETAIL = 'end_date';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM datesync.source WHERE name = NEW.source) THEN
        RAISE EXCEPTION 'unknown source "%"', NEW.source USING ERRCODE = 'check_violation', DETAIL = 'source';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER batch_validate BEFORE INSERT ON datesync.batch
    FOR EACH ROW EXECUTE FUNCTION datesync.batch_validate();

-- The range of a batch is fixed once accepted: its tasks were expanded from it.
CREATE FUNCTION datesync.batch_guard_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.start_date <> OLD.start_date OR NEW.end_date <> OLD.end_date OR NEW.source <> OLD.source
       OR NEW.force <> OLD.force THEN
        RAISE EXCEPTION 'a batch''s source, range and force cannot change; insert a new batch'
            USING ERRCODE = 'check_violation';
    END IF;
    IF OLD.state IN ('succeeded', 'failed', 'cancelled') AND NEW.state <> OLD.state
       AND NOT (OLD.state IN ('failed', 'cancelled') AND NEW.state = 'running') THEN
        RAISE EXCEPTION 'batch % is %; it cannot become %', OLD.id, OLD.state, NEW.state
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.cancel_requested AND NOT OLD.cancel_requested AND OLD.state IN ('succeeded', 'failed', 'cancelled') THEN
        RAISE EXCEPTION 'batch % has already ended (%)', OLD.id, OLD.state USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER batch_guard_update BEFORE UPDATE ON datesync.batch
    FOR EACH ROW EXECUTE FUNCTION datesync.batch_guard_update();

-- Task transitions allowed by the state machine (docs/state_machine.md); anything else is a bug or a
-- hand-edit gone wrong, and is refused.
CREATE FUNCTION datesync.task_guard_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state = OLD.state THEN
        RETURN NEW;
    END IF;
    IF NOT (
        (OLD.state = 'queued' AND NEW.state IN ('running', 'skipped', 'cancelled'))
        OR (OLD.state = 'running' AND NEW.state IN ('queued', 'succeeded', 'failed', 'cancelled'))
        OR (OLD.state IN ('failed', 'cancelled') AND NEW.state = 'queued')  -- retry of a batch
    ) THEN
        RAISE EXCEPTION 'task % cannot move from % to %', OLD.id, OLD.state, NEW.state
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER task_guard_update BEFORE UPDATE OF state ON datesync.task
    FOR EACH ROW EXECUTE FUNCTION datesync.task_guard_update();

-- A new batch, or a cancel request, wakes the daemons. The payload is a hint; daemons rescan the tables.
CREATE FUNCTION datesync.batch_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('datesync_batch', NEW.id::text);
    RETURN NULL;
END $$;
CREATE TRIGGER batch_notify_insert AFTER INSERT ON datesync.batch
    FOR EACH ROW EXECUTE FUNCTION datesync.batch_notify();
CREATE TRIGGER batch_notify_cancel AFTER UPDATE OF cancel_requested ON datesync.batch
    FOR EACH ROW WHEN (NEW.cancel_requested AND NOT OLD.cancel_requested)
    EXECUTE FUNCTION datesync.batch_notify();

-- Every batch, psql-inserted ones too, starts its event log with a "queued" event.
CREATE FUNCTION datesync.batch_event_queued() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO datesync.event (batch_id, kind, state, data)
    VALUES (NEW.id, 'batch', 'queued',
            jsonb_build_object('source', NEW.source, 'start_date', NEW.start_date, 'end_date', NEW.end_date,
                               'days', NEW.days, 'force', NEW.force));
    RETURN NULL;
END $$;
CREATE TRIGGER batch_event_queued AFTER INSERT ON datesync.batch
    FOR EACH ROW EXECUTE FUNCTION datesync.batch_event_queued();

-- Live counts for every batch, derived from its tasks (no hot counter row for finishers to fight over).
CREATE VIEW datesync.batch_progress AS
SELECT b.id AS batch_id,
       b.source,
       b.start_date,
       b.end_date,
       b.force,
       b.state,
       b.cancel_requested,
       b.days,
       CASE WHEN b.state = 'queued' THEN b.days ELSE coalesce(c.queued, 0) END AS queued,
       coalesce(c.running, 0) AS running,
       coalesce(c.succeeded, 0) AS succeeded,
       coalesce(c.failed, 0) AS failed,
       coalesce(c.skipped, 0) AS skipped,
       coalesce(c.cancelled, 0) AS cancelled,
       coalesce(c.succeeded + c.failed + c.skipped + c.cancelled, 0) AS done,
       b.created_at,
       b.started_at,
       b.finished_at
FROM datesync.batch b
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE t.state = 'queued') AS queued,
           count(*) FILTER (WHERE t.state = 'running') AS running,
           count(*) FILTER (WHERE t.state = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE t.state = 'failed') AS failed,
           count(*) FILTER (WHERE t.state = 'skipped') AS skipped,
           count(*) FILTER (WHERE t.state = 'cancelled') AS cancelled
    FROM datesync.task t
    WHERE t.batch_id = b.id
) c ON true;
