-- Sources that depend on each other: when a date of a downstream source waits, and what releases, fails or
-- marks it stale (docs/state_machine.md, "Waiting for upstream dates").
--
-- The current definition of each function and trigger here: this file is re-applied (after the versioned
-- migrations, in file-name order, under the migration lock) whenever its checksum changes. Edit it in place;
-- versioned migrations (migrations/NNNN_*.sql) hold DDL and data changes only.
--
-- A date of a downstream source is inserted `waiting` (batch_expand_claim) and becomes `queued` in the
-- transaction that settles the last upstream date it waits for (the trigger below, whoever settles it: the
-- daemon's task_finish, a lease taken back, a hand edit), which also wakes the daemons: no polling, and no window
-- in which the release is lost. The daemons' catch-up scan (task_release_ready) only covers a date whose upstream
-- settled while its batch was being expanded, or a ledger edited by hand.

-- The upstream dates a date of p_source waits for, with their ledger status ('missing' when never synced): not
-- yet a success, or still to run in a batch p_after names (a cascade re-syncs dates that are a success already).
-- failed_for_good: the date failed and no task of it is left to run (waiting, queued for a retry, or running);
-- the ledger's error comes with it.
DROP FUNCTION IF EXISTS datesync.upstream_pending(text, date, bigint[]);  -- its result gained columns
CREATE OR REPLACE FUNCTION datesync.upstream_pending(p_source text, p_day date, p_after bigint[])
RETURNS TABLE (source text, day date, status text, failed_for_good boolean, error text) LANGUAGE sql STABLE AS $$
    SELECT dep.upstream, u.day, coalesce(d.status::text, 'missing'),
           d.status = 'failed' AND NOT EXISTS (SELECT 1 FROM datesync.task t
                                               WHERE t.source = dep.upstream AND t.day = u.day
                                                 AND t.state IN ('waiting', 'queued', 'running')),
           d.error
    FROM datesync.dependency dep
    CROSS JOIN LATERAL (SELECT (p_day + g)::date AS day FROM generate_series(dep.lo, dep.hi) g) u
    LEFT JOIN datesync.day d ON d.source = dep.upstream AND d.day = u.day
    WHERE dep.source = p_source
      AND (d.status IS DISTINCT FROM 'success'
           OR EXISTS (SELECT 1 FROM datesync.task t
                      WHERE t.batch_id = ANY(p_after) AND t.day = u.day AND t.source = dep.upstream
                        AND t.state IN ('waiting', 'queued', 'running')))
    ORDER BY u.day, dep.upstream;
$$;

-- What a waiting date waits for, for people: "orders 2026-03-01, orders 2026-03-02 (failed)", the first five.
CREATE OR REPLACE FUNCTION datesync.waiting_for(p_source text, p_day date, p_after bigint[]) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT string_agg(q.source || ' ' || q.day || CASE WHEN q.status IN ('failed', 'running')
                                                      THEN ' (' || q.status || ')' ELSE '' END, ', ')
           || CASE WHEN max(q.n) > 5 THEN format(' and %s more', max(q.n) - 5) ELSE '' END
    FROM (SELECT x.*, count(*) OVER () AS n FROM datesync.upstream_pending(p_source, p_day, p_after) x LIMIT 5) q;
$$;

-- A transaction's list of the tasks the trigger below moved and the days it made stale, for the caller's events
-- (events are written last in a transaction; see event_serialize). Transaction-local settings, read once.
CREATE OR REPLACE FUNCTION datesync.dependency_note(p_key text, p_items jsonb) RETURNS void LANGUAGE sql AS $$
    SELECT set_config(p_key, (coalesce(nullif(current_setting(p_key, true), ''), '[]')::jsonb || p_items)::text,
                      true);
$$;
CREATE OR REPLACE FUNCTION datesync.dependency_notes(p_key text) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    notes jsonb := coalesce(nullif(current_setting(p_key, true), ''), '[]')::jsonb;
BEGIN
    IF notes <> '[]' THEN  -- read on every finish: write only when there is something to clear
        PERFORM set_config(p_key, '', true);
    END IF;
    RETURN notes;
END $$;

-- Move the given waiting dates on: to `queued` when they wait for nothing any more, to `failed` (without running
-- their handler) when an upstream date of theirs failed for good: named by p_failed (the trigger's, from the
-- tasks that just failed), or so in the ledger with nothing left to run it again (a date expanded after its
-- upstream failed). Rows are locked in id order, as every release does, so two releases cannot deadlock on each
-- other's rows.
CREATE OR REPLACE FUNCTION datesync.task_advance(p_ids bigint[], p_failed jsonb DEFAULT '[]')
RETURNS SETOF bigint LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    WITH locked AS (
        SELECT t.id, t.source, t.day, b.after_batches FROM datesync.task t JOIN datesync.batch b ON b.id = t.batch_id
        WHERE t.id = ANY(p_ids) AND t.state = 'waiting'
        ORDER BY t.id FOR UPDATE OF t
    ), decided AS (
        SELECT l.id,
               coalesce(
                   (SELECT f ->> 'source' || ' ' || (f ->> 'day') || ' failed'
                           || coalesce(': ' || left(f ->> 'error', 500), '')
                    FROM jsonb_array_elements(p_failed) f
                    JOIN datesync.dependency dep ON dep.source = l.source AND dep.upstream = f ->> 'source'
                    WHERE (f ->> 'day')::date BETWEEN l.day + dep.lo AND l.day + dep.hi
                    ORDER BY f ->> 'day' LIMIT 1),
                   (SELECT p.source || ' ' || p.day || ' failed' || coalesce(': ' || left(p.error, 500), '')
                    FROM datesync.upstream_pending(l.source, l.day, l.after_batches) p
                    WHERE p.failed_for_good ORDER BY p.day, p.source LIMIT 1)) AS failure,
               NOT EXISTS (SELECT 1 FROM datesync.upstream_pending(l.source, l.day, l.after_batches)) AS ready
        FROM locked l
    )
    UPDATE datesync.task t
    SET state = CASE WHEN d.failure IS NOT NULL THEN 'failed' ELSE 'queued' END::datesync.task_state,
        error = d.failure,
        run_after = now(),
        finished_at = CASE WHEN d.failure IS NOT NULL THEN now() END
    FROM decided d
    WHERE t.id = d.id AND (d.failure IS NOT NULL OR d.ready)
    RETURNING t.id;
END $$;

-- When dates settle: release the waiting dates built on those that synced (succeeded or skipped as synced), fail
-- those built on one that failed for good, and mark stale the successful dates built on one a forced run
-- re-synced. Moved tasks and stale days are noted for the caller's events, and a release wakes the daemons. A
-- failure moves waiting dates to `failed`, which fires this again: the failure runs down the whole graph.
-- Named to fire before task_count_update (triggers of one event fire in name order): the waiting rows are locked
-- before any batch row, the lock order of every transaction (task rows, day rows, batch rows, the event lock).
CREATE OR REPLACE FUNCTION datesync.task_after_settle() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    settled jsonb;
    failed jsonb;
    moved bigint[];
    stale jsonb;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM datesync.dependency) THEN
        RETURN NULL;
    END IF;
    SELECT jsonb_agg(jsonb_build_object('source', n.source, 'day', n.day, 'state', n.state, 'force', n.force,
                                        'batch_id', n.batch_id, 'error', n.error))
    INTO settled
    FROM new_rows n JOIN old_rows o ON o.id = n.id
    WHERE o.state <> n.state AND n.state IN ('succeeded', 'skipped', 'failed')
      AND EXISTS (SELECT 1 FROM datesync.dependency dep WHERE dep.upstream = n.source);
    IF settled IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT coalesce(jsonb_agg(f), '[]') INTO failed FROM jsonb_array_elements(settled) f WHERE f ->> 'state' = 'failed';
    SELECT array_agg(DISTINCT w.id) INTO moved
    FROM jsonb_to_recordset(settled) AS s(source text, day date)
    JOIN datesync.dependency dep ON dep.upstream = s.source
    JOIN datesync.task w ON w.source = dep.source AND w.state = 'waiting'
                        AND w.day BETWEEN s.day - dep.hi AND s.day - dep.lo;
    IF moved IS NOT NULL THEN
        SELECT array_agg(a) INTO moved FROM datesync.task_advance(moved, failed) a;
    END IF;
    -- The day rows built on a re-synced date: stale until their own next success (task_finish clears it).
    WITH marked AS (
        UPDATE datesync.day d SET stale_since = now(), updated_at = now()
        FROM jsonb_to_recordset(settled) AS s(source text, day date, state text, force boolean, batch_id bigint)
        JOIN datesync.dependency dep ON dep.upstream = s.source
        WHERE s.state = 'succeeded' AND s.force AND d.source = dep.source
          AND d.day BETWEEN s.day - dep.hi AND s.day - dep.lo
          AND d.status = 'success' AND d.stale_since IS NULL
        RETURNING d.source, d.day, dep.upstream, s.day AS upstream_day, s.batch_id
    )
    SELECT jsonb_agg(to_jsonb(m)) INTO stale FROM marked m;
    IF stale IS NOT NULL THEN
        PERFORM datesync.dependency_note('datesync.stale', stale);
    END IF;
    IF moved IS NOT NULL THEN
        PERFORM datesync.dependency_note('datesync.moved', to_jsonb(moved));
        PERFORM pg_notify('datesync_batch', '');
    END IF;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER task_after_settle AFTER UPDATE ON datesync.task
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION datesync.task_after_settle();

-- The catch-up scan's part (and a batch's, right after its expansion): move on every waiting date (of batch
-- p_batch, or of any) that waits for nothing, or for an upstream date failed for good. Returns how many it moved.
-- p_log: write their events (the scan; an expansion's events come with its claim, last in its transaction).
DROP FUNCTION IF EXISTS datesync.task_release_ready(bigint);
CREATE OR REPLACE FUNCTION datesync.task_release_ready(p_batch bigint DEFAULT NULL, p_log boolean DEFAULT false)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    moved bigint[];
BEGIN
    moved := ARRAY(SELECT datesync.task_advance(ARRAY(
        SELECT t.id FROM datesync.task t
        WHERE t.state = 'waiting' AND (p_batch IS NULL OR t.batch_id = p_batch))));
    IF cardinality(moved) > 0 THEN
        PERFORM pg_notify('datesync_batch', '');
    END IF;
    IF p_log THEN
        PERFORM datesync.event_log_tasks(ARRAY(
            SELECT t FROM datesync.task t
            WHERE t.id = ANY(moved)
               OR t.id IN (SELECT jsonb_array_elements_text(datesync.dependency_notes('datesync.moved'))::bigint)
            ORDER BY t.id));
    END IF;
    RETURN cardinality(moved);
END $$;
