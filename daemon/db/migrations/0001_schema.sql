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
    -- Live counts of its tasks by state, kept by the task_count trigger in the transaction that moves them.
    queued           integer NOT NULL DEFAULT 0,
    running          integer NOT NULL DEFAULT 0,
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
    -- The status before the current run, restored if that run is cancelled or handed back (NULL: never
    -- synced before, and the row goes away again).
    prior_status datesync.day_status CHECK (prior_status IS NULL OR prior_status <> 'running'),
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
    IF NEW.state <> 'queued' OR NEW.started_at IS NOT NULL OR NEW.finished_at IS NOT NULL
       OR (NEW.queued, NEW.running, NEW.succeeded, NEW.failed, NEW.skipped, NEW.cancelled)
          IS DISTINCT FROM (0, 0, 0, 0, 0, 0) THEN
        RAISE EXCEPTION 'a new batch starts queued, with no counts: datesync keeps its state'
            USING ERRCODE = 'check_violation', DETAIL = 'state';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM datesync.source WHERE name = NEW.source) THEN
        RAISE EXCEPTION 'unknown source "%"', NEW.source USING ERRCODE = 'check_violation', DETAIL = 'source';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER batch_validate BEFORE INSERT ON datesync.batch
    FOR EACH ROW EXECUTE FUNCTION datesync.batch_validate();

-- The range of a batch is fixed once accepted: its tasks were expanded from it.
-- The engine's own functions mark their batch writes (a transaction-local setting they clear again), so the
-- guard below can tell them from an operator's hand edit. Custom settings need no privilege (Neon's roles are
-- not superusers); a function-level SET clause would.
CREATE FUNCTION datesync.engine_on() RETURNS void LANGUAGE sql AS $$
    SELECT set_config('datesync.engine', 'on', true);
$$;
CREATE FUNCTION datesync.engine_off() RETURNS void LANGUAGE sql AS $$
    SELECT set_config('datesync.engine', '', true);
$$;

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
    -- State, timings and counts belong to the engine: its functions run with datesync.engine = on, and the
    -- counters are kept by a trigger (one level deeper). An operator's UPDATE may set cancel_requested only.
    IF pg_trigger_depth() = 1 AND current_setting('datesync.engine', true) IS DISTINCT FROM 'on'
       AND (NEW.state, NEW.started_at, NEW.finished_at, NEW.queued, NEW.running, NEW.succeeded, NEW.failed,
            NEW.skipped, NEW.cancelled)
           IS DISTINCT FROM (OLD.state, OLD.started_at, OLD.finished_at, OLD.queued, OLD.running, OLD.succeeded,
                             OLD.failed, OLD.skipped, OLD.cancelled) THEN
        RAISE EXCEPTION 'a batch''s state and counts are kept by datesync; to stop a batch, set cancel_requested'
            USING ERRCODE = 'check_violation';
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

-- Batch counts follow every task transition, whoever makes it (the daemon, the API, a hand edit). One UPDATE
-- per statement and batch, from the statement's transition tables. Batch rows are locked in id order so that two
-- transactions touching the same batches cannot deadlock; event-writing statements come after this in every
-- transaction, so the lock order is always task rows, day rows, batch rows, then the event lock.
CREATE FUNCTION datesync.task_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM 1 FROM datesync.batch WHERE id IN (SELECT batch_id FROM new_rows) ORDER BY id FOR UPDATE;
        UPDATE datesync.batch b SET queued = b.queued + n.c
        FROM (SELECT batch_id, count(*) AS c FROM new_rows WHERE state = 'queued' GROUP BY batch_id) n
        WHERE b.id = n.batch_id;
        RETURN NULL;
    END IF;
    -- Rows whose state did not change (lease renewals) cost a scan of the transition tables and nothing else.
    PERFORM 1 FROM datesync.batch
    WHERE id IN (SELECT n.batch_id FROM new_rows n JOIN old_rows o ON o.id = n.id WHERE o.state <> n.state)
    ORDER BY id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    UPDATE datesync.batch b
    SET queued = b.queued + p.queued, running = b.running + p.running,
        succeeded = b.succeeded + p.succeeded, failed = b.failed + p.failed,
        skipped = b.skipped + p.skipped, cancelled = b.cancelled + p.cancelled
    FROM (SELECT n.batch_id,
                 count(*) FILTER (WHERE n.state = 'queued') - count(*) FILTER (WHERE o.state = 'queued') AS queued,
                 count(*) FILTER (WHERE n.state = 'running') - count(*) FILTER (WHERE o.state = 'running') AS running,
                 count(*) FILTER (WHERE n.state = 'succeeded')
                     - count(*) FILTER (WHERE o.state = 'succeeded') AS succeeded,
                 count(*) FILTER (WHERE n.state = 'failed') - count(*) FILTER (WHERE o.state = 'failed') AS failed,
                 count(*) FILTER (WHERE n.state = 'skipped') - count(*) FILTER (WHERE o.state = 'skipped') AS skipped,
                 count(*) FILTER (WHERE n.state = 'cancelled')
                     - count(*) FILTER (WHERE o.state = 'cancelled') AS cancelled
          FROM new_rows n JOIN old_rows o ON o.id = n.id
          WHERE o.state <> n.state
          GROUP BY n.batch_id) p
    WHERE b.id = p.batch_id;
    RETURN NULL;
END $$;
CREATE TRIGGER task_count_insert AFTER INSERT ON datesync.task
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION datesync.task_count();
-- A hand DELETE of tasks takes them out of their batch's counts too.
CREATE FUNCTION datesync.task_count_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM datesync.batch WHERE id IN (SELECT batch_id FROM old_rows) ORDER BY id FOR UPDATE;
    UPDATE datesync.batch b
    SET queued = b.queued - p.queued, running = b.running - p.running, succeeded = b.succeeded - p.succeeded,
        failed = b.failed - p.failed, skipped = b.skipped - p.skipped, cancelled = b.cancelled - p.cancelled
    FROM (SELECT batch_id,
                 count(*) FILTER (WHERE state = 'queued') AS queued,
                 count(*) FILTER (WHERE state = 'running') AS running,
                 count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
                 count(*) FILTER (WHERE state = 'failed') AS failed,
                 count(*) FILTER (WHERE state = 'skipped') AS skipped,
                 count(*) FILTER (WHERE state = 'cancelled') AS cancelled
          FROM old_rows GROUP BY batch_id) p
    WHERE b.id = p.batch_id;
    RETURN NULL;
END $$;
CREATE TRIGGER task_count_delete AFTER DELETE ON datesync.task
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION datesync.task_count_delete();
CREATE TRIGGER task_count_update AFTER UPDATE ON datesync.task
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION datesync.task_count();

-- Live counts for every batch (a batch not yet expanded counts all its days as queued).
CREATE VIEW datesync.batch_progress AS
SELECT b.id AS batch_id,
       b.source,
       b.start_date,
       b.end_date,
       b.force,
       b.state,
       b.cancel_requested,
       b.days,
       CASE WHEN b.state = 'queued' THEN b.days ELSE b.queued END AS queued,
       b.running,
       b.succeeded,
       b.failed,
       b.skipped,
       b.cancelled,
       b.succeeded + b.failed + b.skipped + b.cancelled AS done,
       b.created_at,
       b.started_at,
       b.finished_at
FROM datesync.batch b;

-- Put days back as they were before a run that did not finish (cancelled, handed back, lease taken back): the
-- prior status, or no row at all for a day never synced before. Only days still marked running are touched.
CREATE FUNCTION datesync.day_restore(p_sources text[], p_days date[]) RETURNS void LANGUAGE sql AS $$
    DELETE FROM datesync.day d USING unnest(p_sources, p_days) AS r(source, day)
    WHERE d.source = r.source AND d.day = r.day AND d.status = 'running' AND d.prior_status IS NULL;
    UPDATE datesync.day d SET status = d.prior_status, prior_status = NULL, updated_at = now()
    FROM unnest(p_sources, p_days) AS r(source, day)
    WHERE d.source = r.source AND d.day = r.day AND d.status = 'running';
$$;

-- Expand the oldest queued batch: running, one task per date (one INSERT … generate_series), and its event.
CREATE FUNCTION datesync.batch_expand(p_max_attempts integer)
RETURNS TABLE (id bigint, source text, days integer, tasks bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    b RECORD;
    made bigint;
BEGIN
    PERFORM datesync.engine_on();
    SELECT x.id INTO b FROM datesync.batch x
    WHERE x.state = 'queued' AND NOT x.cancel_requested
    ORDER BY x.id LIMIT 1 FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        PERFORM datesync.engine_off();
        RETURN;
    END IF;
    UPDATE datesync.batch x SET state = 'running', started_at = now() WHERE x.id = b.id
    RETURNING x.id, x.source, x.start_date, x.end_date, x.force, x.days INTO b;
    INSERT INTO datesync.task (batch_id, source, day, force, max_attempts)
    SELECT b.id, b.source, d::date, b.force, p_max_attempts
    FROM generate_series(b.start_date, b.end_date, interval '1 day') AS d;
    GET DIAGNOSTICS made = ROW_COUNT;
    -- Wake the other daemons now that there are dates to share: the insert's NOTIFY may have reached them before
    -- this expansion committed, when there was nothing to claim yet.
    PERFORM pg_notify('datesync_batch', b.id::text);
    INSERT INTO datesync.event (batch_id, kind, state, data)
    VALUES (b.id, 'batch', 'running', jsonb_build_object('days', b.days));
    PERFORM datesync.engine_off();
    RETURN QUERY SELECT b.id, b.source, b.days, made;
END $$;

-- Cancel a batch that was never expanded (its cancel was requested).
CREATE FUNCTION datesync.batch_cancel_unexpanded(p_id bigint) RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM datesync.engine_on();
    RETURN QUERY UPDATE datesync.batch SET state = 'cancelled', finished_at = now()
        WHERE id = p_id AND state = 'queued' AND cancel_requested
        RETURNING id;
    PERFORM datesync.engine_off();
END $$;

-- Requeue a finished batch's failed (and, for a cancelled batch, cancelled) dates; the batch runs again. Task
-- rows are changed before the batch row, the lock order every transaction follows.
CREATE FUNCTION datesync.batch_requeue_failed(p_id bigint) RETURNS TABLE (id bigint, requeued bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM datesync.engine_on();
    RETURN QUERY WITH t AS (
        UPDATE datesync.task t
        SET state = 'queued', attempt = 0, run_after = now(), error = NULL, finished_at = NULL
        WHERE t.batch_id = p_id AND t.state IN ('failed', 'cancelled')
          AND EXISTS (SELECT 1 FROM datesync.batch b WHERE b.id = p_id AND b.state IN ('failed', 'cancelled'))
        RETURNING t.id
    ), b AS (
        UPDATE datesync.batch SET state = 'running', cancel_requested = false, finished_at = NULL
        WHERE batch.id = p_id AND state IN ('failed', 'cancelled') AND EXISTS (SELECT 1 FROM t)
        RETURNING batch.id
    )
    SELECT b.id, (SELECT count(*) FROM t) FROM b;
    PERFORM datesync.engine_off();
END $$;

-- The hot path, one round trip each: claim dates, and record attempts' outcomes. Each runs its statements in
-- the order every transaction follows (task rows, day rows, batch rows, events last) and ends the batches
-- whose last date it settled, so no separate transaction is needed to notice that a batch is done.

-- End the given running batches that have nothing queued or running; log their final event. Returns them.
CREATE FUNCTION datesync.batch_end_settled(p_ids bigint[])
RETURNS TABLE (id bigint, state text, days integer, succeeded integer, failed integer, skipped integer,
               cancelled integer)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    ended datesync.batch[];
BEGIN
    PERFORM datesync.engine_on();
    WITH e AS (
        UPDATE datesync.batch b
        SET state = CASE WHEN b.cancel_requested THEN 'cancelled'
                         WHEN b.failed > 0 THEN 'failed'
                         ELSE 'succeeded' END::datesync.batch_state,
            finished_at = now()
        WHERE b.id IN (SELECT x.id FROM datesync.batch x
                       WHERE x.id = ANY(p_ids) AND x.state = 'running' AND x.queued = 0 AND x.running = 0
                       ORDER BY x.id FOR UPDATE SKIP LOCKED)
        RETURNING b.*
    )
    SELECT array_agg(e ORDER BY e.id) INTO ended FROM e;
    PERFORM datesync.engine_off();
    IF ended IS NULL THEN
        RETURN;
    END IF;
    INSERT INTO datesync.event (batch_id, kind, state, data)
    SELECT x.id, 'batch', x.state::text,
           jsonb_build_object('final', true, 'days', x.days, 'succeeded', x.succeeded, 'failed', x.failed,
                              'skipped', x.skipped, 'cancelled', x.cancelled)
    FROM unnest(ended) x ORDER BY x.id;
    RETURN QUERY SELECT x.id, x.state::text, x.days, x.succeeded, x.failed, x.skipped, x.cancelled
                 FROM unnest(ended) x;
END $$;

-- Log one event per task row, with its batch's live counts. Call it last in a transaction (see event_serialize).
CREATE FUNCTION datesync.event_log_tasks(p_tasks datesync.task[]) RETURNS void LANGUAGE sql AS $$
    INSERT INTO datesync.event (batch_id, task_id, day, kind, state, attempt, error, data)
    SELECT t.batch_id, t.id, t.day, 'task', t.state::text, t.attempt, t.error,
           jsonb_build_object('counts', jsonb_build_object(
               'queued', b.queued, 'running', b.running, 'succeeded', b.succeeded, 'failed', b.failed,
               'skipped', b.skipped, 'cancelled', b.cancelled, 'days', b.days))
    FROM unnest(p_tasks) t JOIN datesync.batch b ON b.id = t.batch_id
    ORDER BY t.batch_id, t.day;
$$;

-- Lease up to p_limit runnable tasks of p_sources to p_worker, at most one per (source, day) and none whose
-- (source, day) is already running; a date already synced (and not forced) is marked skipped instead. Marks the
-- running days. No events: callers log them last.
CREATE FUNCTION datesync.task_claim_rows(p_worker text, p_limit integer, p_lease float8, p_sources text[])
RETURNS datesync.task[]
LANGUAGE plpgsql
-- Walk task_claimable in order and stop after p_limit rows: never a bitmap scan and sort of the whole queue,
-- which the planner picks when its statistics lag behind a freshly expanded batch.
SET enable_bitmapscan = off
SET enable_seqscan = off
AS $$
DECLARE
    claimed datesync.task[];
BEGIN
    IF p_limit <= 0 THEN
        RETURN '{}';
    END IF;
    WITH candidate AS (
        SELECT t.id, t.source, t.day, t.force
        FROM datesync.task t
        WHERE t.state = 'queued' AND t.run_after <= now() AND t.source = ANY(p_sources)
          AND NOT EXISTS (SELECT 1 FROM datesync.task r
                          WHERE r.source = t.source AND r.day = t.day AND r.state = 'running')
        ORDER BY t.run_after, t.id
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    ), picked AS (
        SELECT DISTINCT ON (c.source, c.day) c.id,
               CASE WHEN d.status = 'success' AND NOT c.force THEN 'skipped'
                    ELSE 'running' END::datesync.task_state AS new_state
        FROM candidate c
        LEFT JOIN datesync.day d ON d.source = c.source AND d.day = c.day
        ORDER BY c.source, c.day, c.id
    ), upd AS (
        UPDATE datesync.task t
        SET state = p.new_state,
            attempt = t.attempt + (p.new_state = 'running')::int,
            lease_owner = CASE WHEN p.new_state = 'running' THEN p_worker END,
            lease_expires_at = CASE WHEN p.new_state = 'running' THEN now() + make_interval(secs => p_lease) END,
            started_at = now(),
            finished_at = CASE WHEN p.new_state = 'skipped' THEN now() END
        FROM picked p
        WHERE t.id = p.id
        RETURNING t.*
    ), marked AS (
        INSERT INTO datesync.day AS d (source, day, status, batch_id, task_id, attempts, started_at)
        SELECT u.source, u.day, 'running', u.batch_id, u.id, u.attempt, now() FROM upd u WHERE u.state = 'running'
        ON CONFLICT (source, day) DO UPDATE
        SET status = 'running', batch_id = EXCLUDED.batch_id, task_id = EXCLUDED.task_id,
            attempts = EXCLUDED.attempts, started_at = EXCLUDED.started_at, updated_at = now(),
            prior_status = CASE WHEN d.status = 'running' THEN d.prior_status ELSE d.status END
    )
    SELECT array_agg(u) INTO claimed FROM upd u;
    RETURN coalesce(claimed, '{}');
END $$;

-- Record outcomes of attempts run by p_worker: succeeded, failed (for good), queued (retry after p_retry_in
-- seconds), cancelled; and hand back p_released (shutdown: queued at once, the attempt not counted). Updates
-- the days. Rows whose lease was lost (cancel, takeover) are left alone and not returned. No events.
CREATE FUNCTION datesync.task_finish_rows(p_worker text, p_ids bigint[], p_attempts integer[], p_states text[],
                                          p_errors text[], p_rows bigint[], p_retry_in float8[],
                                          p_released bigint[])
RETURNS datesync.task[]
LANGUAGE plpgsql AS $$
DECLARE
    changed datesync.task[];
    released datesync.task[];
BEGIN
    IF coalesce(cardinality(p_ids), 0) > 0 THEN
        WITH result AS (
            SELECT * FROM unnest(p_ids, p_attempts, p_states, p_errors, p_rows, p_retry_in)
                AS r(id, attempt, state, error, rows_synced, retry_in)
        ), fin AS (
            UPDATE datesync.task t
            SET state = r.state::datesync.task_state,
                error = r.error,
                rows_synced = r.rows_synced,
                run_after = CASE WHEN r.state = 'queued' THEN now() + make_interval(secs => r.retry_in)
                                 ELSE t.run_after END,
                finished_at = CASE WHEN r.state = 'queued' THEN NULL ELSE now() END,
                lease_owner = NULL,
                lease_expires_at = NULL
            FROM result r
            -- The attempt fences a stale run: its outcome never lands on a newer attempt of the same row.
            WHERE t.id = r.id AND t.attempt = r.attempt AND t.state = 'running' AND t.lease_owner = p_worker
            RETURNING t.*
        ), d AS (
            UPDATE datesync.day d
            SET status = CASE WHEN f.state = 'succeeded' THEN 'success'
                              WHEN f.state = 'cancelled' THEN d.status  -- day_restore, below
                              ELSE 'failed' END::datesync.day_status,
                rows_synced = CASE WHEN f.state = 'succeeded' THEN f.rows_synced ELSE d.rows_synced END,
                error = CASE WHEN f.state = 'succeeded' THEN NULL ELSE coalesce(f.error, d.error) END,
                synced_at = CASE WHEN f.state = 'succeeded' THEN now() ELSE d.synced_at END,
                attempts = f.attempt, batch_id = f.batch_id, task_id = f.id, updated_at = now()
            FROM fin f
            WHERE d.source = f.source AND d.day = f.day
        )
        SELECT array_agg(f) INTO changed FROM fin f;
        -- A cancelled run leaves its day as it found it (or absent, if it had never been synced).
        IF EXISTS (SELECT 1 FROM unnest(changed) c WHERE c.state = 'cancelled') THEN
            PERFORM datesync.day_restore(array_agg(c.source), array_agg(c.day))
            FROM unnest(changed) c WHERE c.state = 'cancelled';
        END IF;
    END IF;
    IF coalesce(cardinality(p_released), 0) > 0 THEN
        WITH rel AS (
            UPDATE datesync.task t
            SET state = 'queued', attempt = greatest(t.attempt - 1, 0), run_after = now(),
                lease_owner = NULL, lease_expires_at = NULL
            WHERE t.id = ANY(p_released) AND t.state = 'running' AND t.lease_owner = p_worker
            RETURNING t.*
        )
        SELECT array_agg(r) INTO released FROM rel r;
        PERFORM datesync.day_restore(array_agg(r.source), array_agg(r.day)) FROM unnest(released) r;
    END IF;
    RETURN coalesce(changed, '{}') || coalesce(released, '{}');
END $$;

-- Log events for claimed and changed tasks (last: see event_serialize), end the batches they settled, and
-- return every row with `kind` ('claimed' or 'finished') and the final state of a batch this call ended.
CREATE FUNCTION datesync.task_log_and_settle(p_claimed datesync.task[], p_changed datesync.task[])
RETURNS TABLE (kind text, id bigint, batch_id bigint, source text, day date, state text, attempt integer,
               max_attempts integer, batch_state text, batch_created_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    ended jsonb;
BEGIN
    IF cardinality(p_claimed) + cardinality(p_changed) = 0 THEN
        RETURN;
    END IF;
    PERFORM datesync.event_log_tasks(p_changed || p_claimed);
    SELECT jsonb_object_agg(e.id::text, e.state) INTO ended
    FROM datesync.batch_end_settled(ARRAY(
        SELECT DISTINCT c.batch_id FROM unnest(p_changed || p_claimed) c
        WHERE c.state NOT IN ('running', 'queued'))) e;
    RETURN QUERY
        SELECT k.kind, c.id, c.batch_id, c.source, c.day, c.state::text, c.attempt, c.max_attempts,
               ended ->> c.batch_id::text, b.created_at
        FROM (SELECT 'claimed' AS kind, x FROM unnest(p_claimed) x
              UNION ALL SELECT 'finished', x FROM unnest(p_changed) x) k
        CROSS JOIN LATERAL (SELECT (k.x).*) c
        JOIN datesync.batch b ON b.id = c.batch_id;
END $$;

-- Claim dates: one round trip, one transaction.
CREATE FUNCTION datesync.task_claim(p_worker text, p_limit integer, p_lease float8, p_sources text[])
RETURNS TABLE (kind text, id bigint, batch_id bigint, source text, day date, state text, attempt integer,
               max_attempts integer, batch_state text, batch_created_at timestamptz)
LANGUAGE sql AS $$
    SELECT * FROM datesync.task_log_and_settle(
        datesync.task_claim_rows(p_worker, p_limit, p_lease, p_sources), '{}');
$$;

-- Record outcomes and, in the same transaction, claim up to p_claim_limit new dates for the slots they free:
-- one commit where a claim and a finish would take two. The claim comes first: it is the only statement that
-- can wait on another transaction (the one-running-per-day index), and it must not wait while holding the
-- batch rows that the finish locks.
CREATE FUNCTION datesync.task_finish(p_worker text, p_ids bigint[], p_attempts integer[], p_states text[],
                                     p_errors text[], p_rows bigint[], p_retry_in float8[], p_released bigint[],
                                     p_claim_limit integer, p_lease float8, p_sources text[])
RETURNS TABLE (kind text, id bigint, batch_id bigint, source text, day date, state text, attempt integer,
               max_attempts integer, batch_state text, batch_created_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    claimed datesync.task[] := datesync.task_claim_rows(p_worker, p_claim_limit, p_lease, p_sources);
BEGIN
    RETURN QUERY SELECT * FROM datesync.task_log_and_settle(
        claimed,
        datesync.task_finish_rows(p_worker, p_ids, p_attempts, p_states, p_errors, p_rows, p_retry_in,
                                  p_released));
END $$;
