-- The database refuses the dates the API refuses, in the API's words: dates before 1000-01-01 (BC, years 1 to 999)
-- and infinite ones. A psql INSERT of a BC batch used to be accepted, and the daemon died decoding its dates
-- (Python's dates start at year 1), again at every restart. Rows already holding such dates stay as they are:
-- the checks below look at new and changed rows only (no CHECK constraint: NOT VALID would still refuse every
-- later UPDATE of an old row, such as the one that fails it), and the engine fails what it cannot run.

-- Why a date cannot be a day to sync, in web/api/i18n.py's English (date_too_early, date_format); NULL when it
-- can. -infinity is before 1000-01-01 too (and it is what asyncpg sends for Python's first date, 0001-01-01);
-- infinity, like anything past year 9999, is no date written YYYY-MM-DD (nor one Python can hold).
CREATE FUNCTION datesync.date_refusal(p_field text, p_value date) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN p_value < date '1000-01-01' THEN p_field || ' must not be before 1000-01-01'
        WHEN p_value > date '9999-12-31' THEN p_field || ' must be a date written YYYY-MM-DD, such as 2025-10-01'
    END;
$$;

-- batch_validate of 0001, with the dates' own checks first, as the API checks each date before the range (and
-- before any subtraction, which fails on an infinite date, naming no field).
CREATE OR REPLACE FUNCTION datesync.batch_validate() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    max_days integer := coalesce(
        (SELECT value::integer FROM datesync.setting WHERE key = 'max_range_days'), 3660);
    zone text := coalesce((SELECT value FROM datesync.setting WHERE key = 'timezone'), 'UTC');
    today date := (now() AT TIME ZONE zone)::date;
    refused text;
BEGIN
    IF NEW.start_date IS NULL THEN
        RAISE EXCEPTION 'start_date is required' USING ERRCODE = 'not_null_violation', DETAIL = 'start_date';
    END IF;
    IF NEW.end_date IS NULL THEN
        RAISE EXCEPTION 'end_date is required' USING ERRCODE = 'not_null_violation', DETAIL = 'end_date';
    END IF;
    refused := datesync.date_refusal('start_date', NEW.start_date);
    IF refused IS NOT NULL THEN
        RAISE EXCEPTION '%', refused USING ERRCODE = 'check_violation', DETAIL = 'start_date';
    END IF;
    refused := datesync.date_refusal('end_date', NEW.end_date);
    IF refused IS NOT NULL THEN
        RAISE EXCEPTION '%', refused USING ERRCODE = 'check_violation', DETAIL = 'end_date';
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

-- Hand edits of task and day rows (an INSERT, a changed day) get the same check, naming `day`. A task of such a
-- date from before may stay in a final state, but never become runnable again (a retry skips it, below).
CREATE FUNCTION datesync.day_validate() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    refused text := datesync.date_refusal('day', NEW.day);
BEGIN
    IF refused IS NOT NULL THEN
        RAISE EXCEPTION '%', refused USING ERRCODE = 'check_violation', DETAIL = 'day';
    END IF;
    RETURN NULL;
END $$;
-- The WHEN clauses repeat date_refusal's bounds as plain comparisons: they are evaluated for every row the hot
-- path writes, and the function is called only for a date outside them. AFTER, not BEFORE: a BEFORE UPDATE row
-- trigger would make every update of a day row lock it first (datesync.task has one already).
CREATE TRIGGER task_day_insert AFTER INSERT ON datesync.task FOR EACH ROW
    WHEN (NOT (NEW.day BETWEEN date '1000-01-01' AND date '9999-12-31'))
    EXECUTE FUNCTION datesync.day_validate();
CREATE TRIGGER task_day_update AFTER UPDATE OF day, state ON datesync.task FOR EACH ROW
    WHEN (NOT (NEW.day BETWEEN date '1000-01-01' AND date '9999-12-31')
          AND (NEW.day IS DISTINCT FROM OLD.day OR NEW.state IN ('queued', 'running')))
    EXECUTE FUNCTION datesync.day_validate();
CREATE TRIGGER day_day_check AFTER INSERT OR UPDATE OF day ON datesync.day FOR EACH ROW
    WHEN (NOT (NEW.day BETWEEN date '1000-01-01' AND date '9999-12-31'))
    EXECUTE FUNCTION datesync.day_validate();

-- batch_expand_claim of 0006, which fails a queued batch whose dates it refuses instead of expanding it: no
-- tasks, its final event carries the reason (also returned, as a row of kind 'refused'), and the call ends there,
-- since the event lock must not be held while a claim waits (see 0006). Such a batch got in before this migration,
-- or past a disabled trigger. Before, its tasks crashed the daemon; now they would be refused by task_day_insert,
-- and the expansion, failing again at every scan, would hold up every batch queued behind it.
DROP FUNCTION datesync.batch_expand_claim(integer, text, integer, float8, text[]);
CREATE FUNCTION datesync.batch_expand_claim(p_max_attempts integer, p_worker text, p_claim_limit integer,
                                            p_lease float8, p_sources text[])
RETURNS TABLE (kind text, id bigint, batch_id bigint, source text, day date, state text, attempt integer,
               max_attempts integer, batch_state text, batch_created_at timestamptz, days integer, tasks bigint,
               error text)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    b RECORD;
    made bigint;
    refused text;
BEGIN
    PERFORM datesync.engine_on();
    SELECT x.id, x.start_date, x.end_date INTO b FROM datesync.batch x
    WHERE x.state = 'queued' AND NOT x.cancel_requested
    ORDER BY x.id LIMIT 1 FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        PERFORM datesync.engine_off();
        RETURN;
    END IF;
    refused := coalesce(datesync.date_refusal('start_date', b.start_date),
                        datesync.date_refusal('end_date', b.end_date));
    IF refused IS NOT NULL THEN
        UPDATE datesync.batch x SET state = 'failed', started_at = now(), finished_at = now() WHERE x.id = b.id
        RETURNING x.id, x.source, x.days, x.created_at INTO b;
        PERFORM datesync.engine_off();
        INSERT INTO datesync.event (batch_id, kind, state, error, data)
        VALUES (b.id, 'batch', 'failed', refused,
                jsonb_build_object('final', true, 'days', b.days, 'succeeded', 0, 'failed', 0, 'skipped', 0,
                                   'cancelled', 0));
        RETURN QUERY SELECT 'refused', b.id, b.id, b.source, NULL::date, 'failed', NULL::integer, NULL::integer,
                            'failed', b.created_at, b.days, 0::bigint, refused;
        RETURN;
    END IF;
    UPDATE datesync.batch x SET state = 'running', started_at = now() WHERE x.id = b.id
    RETURNING x.id, x.source, x.start_date, x.end_date, x.force, x.days, x.created_at INTO b;
    INSERT INTO datesync.task (batch_id, source, day, force, max_attempts)
    SELECT b.id, b.source, d::date, b.force, p_max_attempts
    FROM generate_series(b.start_date, b.end_date, interval '1 day') AS d;
    GET DIAGNOSTICS made = ROW_COUNT;
    -- Wake the other daemons now that there are dates to share: the insert's NOTIFY may have reached them before
    -- this expansion committed, when there was nothing to claim yet.
    PERFORM pg_notify('datesync_batch', b.id::text);
    PERFORM datesync.engine_off();
    RETURN QUERY
        SELECT f.*, NULL::integer, NULL::bigint, NULL::text
        FROM datesync.task_finish(p_worker, '{}', '{}', '{}', '{}', '{}', '{}', '{}', p_claim_limit, p_lease,
                                  p_sources, b.id) f;
    RETURN QUERY SELECT 'expanded', b.id, b.id, b.source, NULL::date, 'running', NULL::integer, NULL::integer,
                        NULL::text, b.created_at, b.days, made, NULL::text;
END $$;

-- batch_requeue_failed of 0001, leaving out the dates refused above: a retry never makes one runnable again.
CREATE OR REPLACE FUNCTION datesync.batch_requeue_failed(p_id bigint) RETURNS TABLE (id bigint, requeued bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM datesync.engine_on();
    RETURN QUERY WITH t AS (
        UPDATE datesync.task t
        SET state = 'queued', attempt = 0, run_after = now(), error = NULL, finished_at = NULL
        WHERE t.batch_id = p_id AND t.state IN ('failed', 'cancelled')
          AND t.day BETWEEN date '1000-01-01' AND date '9999-12-31'
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

-- Such dates caught mid-flight: a batch expanded before this migration, its first dates leased to a daemon that
-- then died decoding them. They can never run, so they fail now, with the reason, and their batches end. Queued
-- to failed is no transition of the state machine (task_guard_update refuses it); this one-off move goes around
-- the guard, inside this transaction only.
DO $$
DECLARE
    failed datesync.task[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM datesync.task
                   WHERE state IN ('queued', 'running') AND datesync.date_refusal('day', day) IS NOT NULL) THEN
        RETURN;
    END IF;
    ALTER TABLE datesync.task DISABLE TRIGGER task_guard_update;
    WITH f AS (
        UPDATE datesync.task t
        SET state = 'failed', error = datesync.date_refusal('day', t.day), finished_at = now(),
            lease_owner = NULL, lease_expires_at = NULL
        WHERE t.state IN ('queued', 'running') AND datesync.date_refusal('day', t.day) IS NOT NULL
        RETURNING t.*
    ), d AS (
        UPDATE datesync.day d SET status = 'failed', error = f.error, updated_at = now()
        FROM f WHERE d.source = f.source AND d.day = f.day AND d.status = 'running'
    )
    SELECT array_agg(f) INTO failed FROM f;
    ALTER TABLE datesync.task ENABLE TRIGGER task_guard_update;
    PERFORM datesync.event_log_tasks(failed);
    PERFORM datesync.batch_end_settled(ARRAY(SELECT DISTINCT f.batch_id FROM unnest(failed) f));
END $$;
