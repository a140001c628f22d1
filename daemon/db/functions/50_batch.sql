-- datesync.batch: checks on insert, guarded updates, wake-ups, requests, expansion, cancel, retry, end.
--
-- The current definition of each function and trigger here: this file is re-applied (after the versioned
-- migrations, in file-name order, under the migration lock) whenever its checksum changes. Edit it in place;
-- versioned migrations (migrations/NNNN_*.sql) hold DDL and data changes only.

-- Operator INSERTs get the API's checks and wording. Raised as check_violation with the field in DETAIL.
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
    -- Each date on its own first, as the API checks them (15_date_bounds.sql), and before any subtraction, which
    -- fails on an infinite date naming no field.
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
CREATE OR REPLACE TRIGGER batch_validate BEFORE INSERT ON datesync.batch
    FOR EACH ROW EXECUTE FUNCTION datesync.batch_validate();

-- The range of a batch is fixed once accepted (its tasks were expanded from it); its state, timings and counts
-- belong to the engine, whose functions mark their writes with datesync.engine_on().
CREATE OR REPLACE FUNCTION datesync.batch_guard_update() RETURNS trigger LANGUAGE plpgsql AS $$
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
       AND (NEW.state, NEW.started_at, NEW.finished_at, NEW.waiting, NEW.queued, NEW.running, NEW.succeeded,
            NEW.failed, NEW.skipped, NEW.cancelled, NEW.after_batches)
           IS DISTINCT FROM (OLD.state, OLD.started_at, OLD.finished_at, OLD.waiting, OLD.queued, OLD.running,
                             OLD.succeeded, OLD.failed, OLD.skipped, OLD.cancelled, OLD.after_batches) THEN
        RAISE EXCEPTION 'a batch''s state and counts are kept by datesync; to stop a batch, set cancel_requested'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE OR REPLACE TRIGGER batch_guard_update BEFORE UPDATE ON datesync.batch
    FOR EACH ROW EXECUTE FUNCTION datesync.batch_guard_update();

-- A new batch, or a cancel request, wakes the daemons. The payload is a hint; daemons rescan the tables.
CREATE OR REPLACE TRIGGER batch_notify_insert AFTER INSERT ON datesync.batch
    FOR EACH ROW EXECUTE FUNCTION datesync.notify('datesync_batch');
CREATE OR REPLACE TRIGGER batch_notify_cancel AFTER UPDATE OF cancel_requested ON datesync.batch
    FOR EACH ROW WHEN (NEW.cancel_requested AND NOT OLD.cancel_requested)
    EXECUTE FUNCTION datesync.notify('datesync_batch');
DROP FUNCTION IF EXISTS datesync.batch_notify();  -- before datesync.notify (migrations 0001..0008)

-- Every batch, psql-inserted ones too, starts its event log with a "queued" event.
CREATE OR REPLACE FUNCTION datesync.batch_event_queued() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO datesync.event (batch_id, kind, state, data)
    VALUES (NEW.id, 'batch', 'queued',
            jsonb_build_object('source', NEW.source, 'start_date', NEW.start_date, 'end_date', NEW.end_date,
                               'days', NEW.days, 'force', NEW.force));
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER batch_event_queued AFTER INSERT ON datesync.batch
    FOR EACH ROW EXECUTE FUNCTION datesync.batch_event_queued();

-- Expansion alone, without a claim (the benchmark's expansion measure and tests use it).
CREATE OR REPLACE FUNCTION datesync.batch_expand(p_max_attempts integer)
RETURNS TABLE (id bigint, source text, days integer, tasks bigint)
LANGUAGE sql AS $$
    SELECT e.id, e.source, e.days, e.tasks
    FROM datesync.batch_expand_claim(p_max_attempts, NULL, 0, 0, '{}') e
    WHERE e.kind = 'expanded';
$$;

-- Cancel a batch that was never expanded (its cancel was requested).
CREATE OR REPLACE FUNCTION datesync.batch_cancel_unexpanded(p_id bigint) RETURNS SETOF bigint
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
CREATE OR REPLACE FUNCTION datesync.batch_requeue_failed(p_id bigint) RETURNS TABLE (id bigint, requeued bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM datesync.engine_on();
    RETURN QUERY WITH t AS (
        UPDATE datesync.task t
        SET state = CASE WHEN EXISTS (SELECT 1 FROM datesync.upstream_pending(t.source, t.day, '{}'))
                         THEN 'waiting' ELSE 'queued' END::datesync.task_state,
            attempt = 0, run_after = now(), error = NULL, finished_at = NULL
        WHERE t.batch_id = p_id AND t.state IN ('failed', 'cancelled')
          AND t.day BETWEEN date '1000-01-01' AND date '9999-12-31'  -- a date refused since 0007 never runs
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

-- End the given running batches that have nothing waiting, queued or running; log their final event. Returns them.
-- Called after a commit, by a daemon that finished dates of these batches and holds none of them any more (the last
-- dates of a batch finished at once: see task_finish), and by the catch-up scan. The batch rows are folded under
-- their locks first (datesync.batch_fold); a row another transaction holds is waited for, but not for long: one held
-- by an operator's open transaction is left to the next scan.
CREATE OR REPLACE FUNCTION datesync.batch_end_settled(p_ids bigint[])
RETURNS TABLE (id bigint, state text, days integer, succeeded integer, failed integer, skipped integer,
               cancelled integer)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET lock_timeout = '2s'
AS $$
#variable_conflict use_column
DECLARE
    settled bigint[];
    ended datesync.batch[];
BEGIN
    settled := ARRAY(SELECT l.id FROM datesync.batch_live l
                     WHERE l.id = ANY(p_ids) AND l.state = 'running' AND l.queued = 0 AND l.running = 0
                       AND l.waiting = 0);
    IF settled = '{}' THEN
        RETURN;
    END IF;
    BEGIN
        settled := datesync.batch_fold(settled, false);
    EXCEPTION WHEN lock_not_available THEN
        RETURN;
    END;
    PERFORM datesync.engine_on();
    WITH e AS (
        UPDATE datesync.batch b
        SET state = datesync.batch_end_state(b.cancel_requested, b.failed), finished_at = now()
        WHERE b.id = ANY(settled) AND b.state = 'running' AND b.queued = 0 AND b.running = 0 AND b.waiting = 0
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

-- A batch request from the API as one statement: dedupe, Idempotency-Key and insert, race-free.
-- Called on its own (no explicit transaction), the implicit transaction commits inside the server right after
-- the INSERT, whose trigger writes the batch's first event and takes the event lock: as one statement, no client
-- round trip sits between that lock and the commit. Identical requests (source, range, force) and requests with
-- the same key are serialised by advisory locks, taken body first, then key, so there is no lock cycle. In READ
-- COMMITTED each statement of a VOLATILE function takes a new snapshot, so the look-ups after the locks see every
-- batch committed while we waited. A key is remembered with the batch it was answered with (request_key), also
-- when the request was de-duplicated onto another batch.
-- p_after: the batches this one must be expanded after (batch_request_linked).
-- (Dropped first: CREATE OR REPLACE cannot add the p_after argument.)
DROP FUNCTION IF EXISTS datesync.batch_request(text, date, date, boolean, text, text);
CREATE OR REPLACE FUNCTION datesync.batch_request(
    p_source text, p_start date, p_end date, p_force boolean, p_key text, p_requested_by text,
    p_after bigint[] DEFAULT '{}'
) RETURNS TABLE (batch_id bigint, days integer, outcome text) LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    found bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(7355609, hashtext(concat_ws('|', p_source, p_start, p_end, p_force)));
    PERFORM pg_advisory_xact_lock(7355610, hashtext(p_key));  -- strict: a NULL key takes no lock
    IF p_key IS NOT NULL THEN
        SELECT coalesce((SELECT k.batch_id FROM datesync.request_key k WHERE k.key = p_key),
                        (SELECT b.id FROM datesync.batch b WHERE b.idempotency_key = p_key)) INTO found;
        IF found IS NOT NULL THEN
            -- A key answers only the request it was made for: another body with the same key is a client's bug
            -- (Stripe answers the same), not a retry to replay.
            RETURN QUERY SELECT b.id, b.days,
                CASE WHEN (b.source, b.start_date, b.end_date, b.force) = (p_source, p_start, p_end, p_force)
                     THEN 'replayed' ELSE 'key_conflict' END
            FROM datesync.batch b WHERE b.id = found;
            RETURN;
        END IF;
    END IF;
    SELECT b.id INTO found FROM datesync.batch b
    WHERE b.source = p_source AND b.start_date = p_start AND b.end_date = p_end AND b.force = p_force
      AND b.state IN ('queued', 'running') AND NOT b.cancel_requested
    ORDER BY b.id DESC LIMIT 1;
    IF found IS NOT NULL THEN
        IF p_key IS NOT NULL THEN
            INSERT INTO datesync.request_key (key, batch_id) VALUES (p_key, found) ON CONFLICT (key) DO NOTHING;
        END IF;
        RETURN QUERY SELECT b.id, b.days, 'duplicate' FROM datesync.batch b WHERE b.id = found;
        RETURN;
    END IF;
    -- Last: batch_validate checks it (raising check_violation with the field in DETAIL), batch_event_queued
    -- writes its event and batch_notify wakes the daemons, all committed together.
    RETURN QUERY
    INSERT INTO datesync.batch AS b (source, start_date, end_date, force, idempotency_key, requested_by,
                                     after_batches)
    VALUES (p_source, p_start, p_end, p_force, p_key, p_requested_by, p_after)
    RETURNING b.id, b.days, 'created';
END $$;

-- A batch with the batches of the sources it depends on (p_with_upstream: each upstream source over the dates
-- the range waits for, not forced, so dates already synced are skipped) and of the sources built on it
-- (p_cascade: each downstream source, forced, over the dates built on the range that have synced before: the
-- span of those the re-sync makes stale; a date never synced is not re-run), in one transaction. Each batch
-- is expanded after the ones before it (after_batches), so a downstream date sees its upstream dates still to
-- run, and waits for them. Ranges are cut at today. Returns every batch, the requested one with role
-- 'requested'. A repeated Idempotency-Key answers with its batch alone, requesting nothing more.
CREATE OR REPLACE FUNCTION datesync.batch_request_linked(
    p_source text, p_start date, p_end date, p_force boolean, p_key text, p_requested_by text,
    p_with_upstream boolean, p_cascade boolean
) RETURNS TABLE (batch_id bigint, days integer, outcome text, role text, source text, start_date date,
                 end_date date)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    r RECORD;
    got RECORD;
    before bigint[] := '{}';
    -- Today as batch_validate sees it.
    today date := (now() AT TIME ZONE coalesce((SELECT value FROM datesync.setting WHERE key = 'timezone'),
                                                 'UTC'))::date;
BEGIN
    IF p_key IS NOT NULL THEN
        -- batch_request's locks, in its order (body, then key), so that the two never wait on each other.
        PERFORM pg_advisory_xact_lock(7355609, hashtext(concat_ws('|', p_source, p_start, p_end, p_force)));
        PERFORM pg_advisory_xact_lock(7355610, hashtext(p_key));
        IF EXISTS (SELECT 1 FROM datesync.request_key k WHERE k.key = p_key)
           OR EXISTS (SELECT 1 FROM datesync.batch b WHERE b.idempotency_key = p_key) THEN
            RETURN QUERY SELECT x.batch_id, x.days, x.outcome, 'requested', p_source, p_start, p_end
                         FROM datesync.batch_request(p_source, p_start, p_end, p_force, p_key, p_requested_by) x;
            RETURN;
        END IF;
    END IF;
    FOR r IN
        WITH RECURSIVE up(source, start_date, end_date, depth) AS (
            SELECT p_source, p_start, p_end, 0 WHERE p_with_upstream
            UNION ALL
            SELECT dep.upstream, u.start_date + dep.lo, least(u.end_date + dep.hi, today), u.depth + 1
            FROM up u JOIN datesync.dependency dep ON dep.source = u.source
            WHERE u.depth < 64
        ), down(source, start_date, end_date, depth) AS (
            SELECT p_source, p_start, p_end, 0 WHERE p_cascade
            UNION ALL
            SELECT dep.source, d.start_date - dep.hi, least(d.end_date - dep.lo, today), d.depth + 1
            FROM down d JOIN datesync.dependency dep ON dep.upstream = d.source
            WHERE d.depth < 64
        ), downstream AS (
            -- A source reached by several paths gets the union of their ranges, as upstream ones do below.
            SELECT d.source, min(d.start_date) AS start_date, max(d.end_date) AS end_date, max(d.depth) AS depth
            FROM down d WHERE d.depth > 0 GROUP BY d.source
        )
        -- In request order: upstream sources furthest first, the requested batch, downstream sources nearest first.
        SELECT 'upstream' AS role, u.source, min(u.start_date) AS start_date, max(u.end_date) AS end_date,
               false AS force, -max(u.depth) AS place
        FROM up u WHERE u.depth > 0 GROUP BY u.source
        HAVING min(u.start_date) <= max(u.end_date)
        UNION ALL
        SELECT 'requested', p_source, p_start, p_end, p_force, 0
        UNION ALL
        SELECT 'downstream', w.source, synced.first_day, synced.last_day, true, w.depth
        FROM downstream w
        CROSS JOIN LATERAL (SELECT min(x.day) AS first_day, max(x.day) AS last_day FROM datesync.day x
                            WHERE x.source = w.source AND x.day BETWEEN w.start_date AND w.end_date
                              AND x.status = 'success') synced
        WHERE synced.first_day IS NOT NULL
        ORDER BY place, source
    LOOP
        SELECT x.* INTO got FROM datesync.batch_request(r.source, r.start_date, r.end_date, r.force,
                                                        CASE WHEN r.role = 'requested' THEN p_key END,
                                                        p_requested_by, before) x;
        RETURN QUERY SELECT got.batch_id, got.days, got.outcome, r.role, r.source, r.start_date, r.end_date;
        before := before || got.batch_id;
    END LOOP;
END $$;

-- How many dates of a range of p_source wait for upstream dates not synced yet, and which sources those are.
CREATE OR REPLACE FUNCTION datesync.batch_waiting_preview(p_source text, p_start date, p_end date)
RETURNS TABLE (waiting bigint, upstream text[]) LANGUAGE sql STABLE AS $$
    SELECT count(DISTINCT g.day), coalesce(array_agg(DISTINCT p.source ORDER BY p.source), '{}')
    FROM (SELECT d::date AS day FROM generate_series(p_start, p_end, interval '1 day') d) g
    CROSS JOIN LATERAL datesync.upstream_pending(p_source, g.day, '{}') p
    WHERE EXISTS (SELECT 1 FROM datesync.dependency dep WHERE dep.source = p_source);
$$;

-- Expand the oldest queued batch into one task per date and claim up to p_claim_limit dates (of any batch, the
-- new one's first in line) for p_worker, in one transaction. Returns the claimed rows as task_finish does, then
-- one row of kind 'expanded' with the batch's days and tasks made; nothing when no batch is queued. The lock
-- order is the usual one but for the new batch's row, locked first: no other transaction can reach that row
-- through a task (its tasks are not visible before this commits), so holding it while the claim waits (on
-- another daemon's claim of the same date) closes no cycle.
--
-- A batch holding a date the database refuses (15_date_bounds.sql: from before 0007, or past a disabled trigger)
-- is failed instead, with no tasks; its final event carries the reason, returned too as the one row, of kind
-- 'refused'. The call ends there: the event lock must not be held while a claim waits. Expanded, its tasks would
-- be refused (task_day_insert), and the expansion, failing at every scan, would hold up every batch behind it.
-- (Dropped first: CREATE OR REPLACE cannot add the `error` column to the result.)
DROP FUNCTION IF EXISTS datesync.batch_expand_claim(integer, text, integer, float8, text[]);
CREATE OR REPLACE FUNCTION datesync.batch_expand_claim(p_max_attempts integer, p_worker text, p_claim_limit integer,
                                            p_lease float8, p_sources text[], p_notify boolean DEFAULT true)
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
    waits boolean;
    failed_now jsonb;
BEGIN
    PERFORM datesync.engine_on();
    SELECT x.id, x.start_date, x.end_date INTO b FROM datesync.batch x
    WHERE x.state = 'queued' AND NOT x.cancel_requested
      -- Not before the batches it runs after (a cascade, with_upstream): their dates must exist to be waited for.
      AND NOT EXISTS (SELECT 1 FROM datesync.batch a WHERE a.id = ANY(x.after_batches) AND a.state = 'queued')
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
    -- The dates of a source built on others start waiting (45_dependency.sql), and those whose upstream dates
    -- have synced are released at once.
    waits := EXISTS (SELECT 1 FROM datesync.dependency dep WHERE dep.source = b.source);
    INSERT INTO datesync.task (batch_id, source, day, force, max_attempts, state)
    SELECT b.id, b.source, d::date, b.force, p_max_attempts,
           CASE WHEN waits THEN 'waiting' ELSE 'queued' END::datesync.task_state
    FROM generate_series(b.start_date, b.end_date, interval '1 day') AS d;
    GET DIAGNOSTICS made = ROW_COUNT;
    IF waits THEN
        PERFORM datesync.task_release_ready(b.id);
        -- The dates released at once are told as they are claimed, like any queued date; those failed by an
        -- upstream date that failed for good are told by task_finish below, which ends the batch if they were all.
        failed_now := (SELECT jsonb_agg(x) FROM jsonb_array_elements(datesync.dependency_notes('datesync.moved')) x
                       JOIN datesync.task t ON t.id = x::bigint WHERE t.state = 'failed');
        IF failed_now IS NOT NULL THEN
            PERFORM datesync.dependency_note('datesync.moved', failed_now);
        END IF;
    END IF;
    PERFORM datesync.engine_off();
    RETURN QUERY
        SELECT f.*, NULL::integer, NULL::bigint, NULL::text
        FROM datesync.task_finish(p_worker, '{}', '{}', '{}', '{}', '{}', '{}', '{}', p_claim_limit, p_lease,
                                  p_sources, b.id, p_notify) f;
    -- Wake the other daemons if this transaction left dates to share: the insert's NOTIFY may have reached them
    -- before it committed, when there was nothing to claim yet. A batch whose dates it claimed all (a one-date
    -- batch, the common case) needs none: a NOTIFY costs its commit the server-wide notification lock, and wakes
    -- every daemon, this one too, for a scan that finds nothing (the wake-up latency, issue 20). Dates released
    -- later from waiting are NOTIFYed by their release (45_dependency.sql).
    IF EXISTS (SELECT 1 FROM datesync.task t WHERE t.batch_id = b.id AND t.state = 'queued') THEN
        PERFORM pg_notify('datesync_batch', b.id::text);
    END IF;
    RETURN QUERY SELECT 'expanded', b.id, b.id, b.source, NULL::date, 'running', NULL::integer, NULL::integer,
                        NULL::text, b.created_at, b.days, made, NULL::text;
END $$;
