-- datesync.task: its guarded transitions, its batch's live counts, and the hot path (claim, finish).
--
-- The current definition of each function and trigger here: this file is re-applied (after the versioned
-- migrations, in file-name order, under the migration lock) whenever its checksum changes. Edit it in place;
-- versioned migrations (migrations/NNNN_*.sql) hold DDL and data changes only.

-- Task transitions allowed by the state machine (docs/state_machine.md); anything else is a bug or a
-- hand-edit gone wrong, and is refused.
CREATE OR REPLACE FUNCTION datesync.task_guard_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state = OLD.state THEN
        RETURN NEW;
    END IF;
    IF NOT (
        (OLD.state = 'queued' AND NEW.state IN ('running', 'skipped', 'cancelled'))
        OR (OLD.state = 'running' AND NEW.state IN ('queued', 'succeeded', 'failed', 'cancelled'))
        OR (OLD.state IN ('failed', 'cancelled') AND NEW.state IN ('queued', 'waiting'))  -- retry of a batch
        OR (OLD.state = 'waiting' AND NEW.state IN ('queued', 'failed', 'cancelled'))
    ) THEN
        RAISE EXCEPTION 'task % cannot move from % to %', OLD.id, OLD.state, NEW.state
            USING ERRCODE = 'check_violation';
    END IF;
    -- A date built on others is released or retried only once they have synced (45_dependency.sql), whoever
    -- does it (a hand edit too). A retry after it ran needs no check: its upstream dates had synced.
    IF NEW.state = 'queued' AND OLD.state IN ('waiting', 'failed', 'cancelled')
       AND EXISTS (SELECT 1 FROM datesync.dependency WHERE source = NEW.source)
       AND EXISTS (SELECT 1 FROM datesync.upstream_pending(NEW.source, NEW.day,
                                  (SELECT b.after_batches FROM datesync.batch b WHERE b.id = NEW.batch_id))) THEN
        RAISE EXCEPTION 'task % of % % cannot be queued: it waits for %', OLD.id, NEW.source, NEW.day,
            datesync.waiting_for(NEW.source, NEW.day, (SELECT b.after_batches FROM datesync.batch b
                                                       WHERE b.id = NEW.batch_id))
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
-- The hot path's transitions (a claim, an outcome) are allowed by the WHEN condition alone: a function call per
-- row was a tenth of a round's time (issue 20). Every other change of state goes through the function.
CREATE OR REPLACE TRIGGER task_guard_update BEFORE UPDATE OF state ON datesync.task
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state AND NOT (
        (OLD.state = 'queued' AND NEW.state IN ('running', 'skipped', 'cancelled'))
        OR (OLD.state = 'running' AND NEW.state IN ('queued', 'succeeded', 'failed', 'cancelled'))))
    EXECUTE FUNCTION datesync.task_guard_update();

-- Batch counts follow every task transition, whoever makes it (the daemon, the API, a hand edit). An expansion's
-- INSERT adds to the batch row it holds; every other statement inserts one row of changes per batch into
-- datesync.batch_count, from the statement's transition tables, and locks no batch row: daemons finishing dates of
-- one batch do not wait for each other's commits (issue 20). Readers add those rows to the batch row
-- (datesync.batch_live); every 32nd row's transaction folds its batch's rows into the batch row, if no other
-- transaction holds that row (datesync.batch_fold). Lock order: task rows, day rows, batch rows, then the event lock.
CREATE OR REPLACE FUNCTION datesync.task_count() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    due bigint[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM 1 FROM datesync.batch WHERE id IN (SELECT batch_id FROM new_rows) ORDER BY id FOR UPDATE;
        UPDATE datesync.batch b SET queued = b.queued + n.queued, waiting = b.waiting + n.waiting
        FROM (SELECT batch_id, count(*) FILTER (WHERE state = 'queued') AS queued,
                     count(*) FILTER (WHERE state = 'waiting') AS waiting
              FROM new_rows GROUP BY batch_id) n
        WHERE b.id = n.batch_id;
        RETURN NULL;
    END IF;
    -- Rows whose state did not change (lease renewals) cost a scan of the transition tables and nothing else.
    WITH added AS (
        INSERT INTO datesync.batch_count (batch_id, waiting, queued, running, succeeded, failed, skipped, cancelled)
        SELECT n.batch_id,
               count(*) FILTER (WHERE n.state = 'waiting') - count(*) FILTER (WHERE o.state = 'waiting'),
               count(*) FILTER (WHERE n.state = 'queued') - count(*) FILTER (WHERE o.state = 'queued'),
               count(*) FILTER (WHERE n.state = 'running') - count(*) FILTER (WHERE o.state = 'running'),
               count(*) FILTER (WHERE n.state = 'succeeded') - count(*) FILTER (WHERE o.state = 'succeeded'),
               count(*) FILTER (WHERE n.state = 'failed') - count(*) FILTER (WHERE o.state = 'failed'),
               count(*) FILTER (WHERE n.state = 'skipped') - count(*) FILTER (WHERE o.state = 'skipped'),
               count(*) FILTER (WHERE n.state = 'cancelled') - count(*) FILTER (WHERE o.state = 'cancelled')
        FROM new_rows n JOIN old_rows o ON o.id = n.id
        WHERE o.state <> n.state
        GROUP BY n.batch_id
        RETURNING batch_id, n
    )
    SELECT array_agg(a.batch_id) FILTER (WHERE a.n % 32 = 0) INTO due FROM added a;
    IF due IS NOT NULL THEN
        PERFORM datesync.batch_fold(due, true);
    END IF;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER task_count_insert AFTER INSERT ON datesync.task
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION datesync.task_count();
CREATE OR REPLACE TRIGGER task_count_update AFTER UPDATE ON datesync.task
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION datesync.task_count();

-- Fold the given batches' rows of count changes into their batch rows, under those rows' locks (skipping the
-- batches whose row another transaction holds when p_skip_locked). Returns the batches folded. The rows are read
-- by a statement that starts after the locks are granted: it sees every row committed until then, deletes and
-- adds exactly those (and this transaction's own), and leaves the rows of transactions still running, which
-- readers keep adding. Rows are only ever inserted, and deleted here under the batch row's lock, so no fold waits
-- on a row of this table.
CREATE OR REPLACE FUNCTION datesync.batch_fold(p_ids bigint[], p_skip_locked boolean) RETURNS bigint[]
LANGUAGE plpgsql AS $$
DECLARE
    locked bigint[];
    engine text := current_setting('datesync.engine', true);
BEGIN
    IF p_skip_locked THEN
        locked := ARRAY(SELECT id FROM datesync.batch WHERE id = ANY(p_ids) ORDER BY id FOR NO KEY UPDATE SKIP LOCKED);
    ELSE
        locked := ARRAY(SELECT id FROM datesync.batch WHERE id = ANY(p_ids) ORDER BY id FOR NO KEY UPDATE);
    END IF;
    PERFORM set_config('datesync.engine', 'on', true);
    WITH gone AS (
        DELETE FROM datesync.batch_count c WHERE c.batch_id = ANY(locked)
        RETURNING c.batch_id, c.waiting, c.queued, c.running, c.succeeded, c.failed, c.skipped, c.cancelled
    )
    UPDATE datesync.batch b
    SET waiting = b.waiting + g.waiting, queued = b.queued + g.queued, running = b.running + g.running,
        succeeded = b.succeeded + g.succeeded, failed = b.failed + g.failed, skipped = b.skipped + g.skipped,
        cancelled = b.cancelled + g.cancelled
    FROM (SELECT batch_id, sum(waiting) AS waiting, sum(queued) AS queued, sum(running) AS running,
                 sum(succeeded) AS succeeded, sum(failed) AS failed, sum(skipped) AS skipped,
                 sum(cancelled) AS cancelled
          FROM gone GROUP BY batch_id) g
    WHERE b.id = g.batch_id;
    PERFORM set_config('datesync.engine', coalesce(engine, ''), true);
    RETURN locked;
END $$;

-- The rows of count changes are the engine's (task_count, batch_fold): a hand edit of them would make every
-- reader's counts wrong. Rows of a deleted batch go with it.
CREATE OR REPLACE FUNCTION datesync.batch_count_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_trigger_depth() = 1 AND current_setting('datesync.engine', true) IS DISTINCT FROM 'on' THEN
        RAISE EXCEPTION 'datesync.batch_count is kept by datesync (a batch''s counts follow its tasks)'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER batch_count_guard BEFORE INSERT OR UPDATE OR DELETE ON datesync.batch_count
    FOR EACH STATEMENT EXECUTE FUNCTION datesync.batch_count_guard();

CREATE OR REPLACE FUNCTION datesync.batch_count_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM datesync.batch_count WHERE batch_id IN (SELECT id FROM old_rows);
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER batch_count_delete AFTER DELETE ON datesync.batch
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION datesync.batch_count_delete();

-- A hand DELETE of tasks takes them out of their batch's counts too. Retention's does not: a pruned batch keeps
-- its final counts (datesync.batch_prune_step says so with a transaction-local setting, as the engine's functions
-- do with datesync.engine).
CREATE OR REPLACE FUNCTION datesync.task_count_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('datesync.retention', true) = 'on' THEN
        RETURN NULL;
    END IF;
    PERFORM 1 FROM datesync.batch WHERE id IN (SELECT batch_id FROM old_rows) ORDER BY id FOR UPDATE;
    UPDATE datesync.batch b
    SET waiting = b.waiting - p.waiting, queued = b.queued - p.queued, running = b.running - p.running,
        succeeded = b.succeeded - p.succeeded, failed = b.failed - p.failed, skipped = b.skipped - p.skipped,
        cancelled = b.cancelled - p.cancelled
    FROM (SELECT batch_id,
                 count(*) FILTER (WHERE state = 'waiting') AS waiting,
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
CREATE OR REPLACE TRIGGER task_count_delete AFTER DELETE ON datesync.task
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION datesync.task_count_delete();

-- Claiming alone is the same call with no outcomes.
DROP FUNCTION IF EXISTS datesync.task_claim(text, integer, float8, text[]);  -- before p_notify
CREATE OR REPLACE FUNCTION datesync.task_claim(p_worker text, p_limit integer, p_lease float8, p_sources text[],
                                               p_notify boolean DEFAULT true)
RETURNS TABLE (kind text, id bigint, batch_id bigint, source text, day date, state text, attempt integer,
               max_attempts integer, batch_state text, batch_created_at timestamptz)
LANGUAGE sql AS $$
    SELECT * FROM datesync.task_finish(p_worker, '{}', '{}', '{}', '{}', '{}', '{}', '{}', p_limit, p_lease,
                                       p_sources, NULL, p_notify);
$$;

-- The state a settled batch (nothing queued or running) ends in; task_finish and batch_end_settled end batches.
-- A one-expression SQL function: the planner inlines it into the statement that calls it, so it costs the hot
-- path no call.
CREATE OR REPLACE FUNCTION datesync.batch_end_state(p_cancel_requested boolean, p_failed integer)
RETURNS datesync.batch_state LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN p_cancel_requested THEN 'cancelled'
                WHEN p_failed > 0 THEN 'failed'
                ELSE 'succeeded' END::datesync.batch_state;
$$;

-- The hot path, one round trip and one commit: record the outcomes of attempts run by p_worker (succeeded,
-- failed for good, queued for a retry after p_retry_in seconds, cancelled), hand back p_released (shutdown: queued
-- at once, the attempt not counted), and claim up to p_claim_limit new dates for the slots they free. Three
-- statements, because each pays the executor's start-up (plans, checks, triggers):
--   1. claim and finish: task rows and day rows in one statement, so the counting trigger runs once, at its end;
--   2. the rare cases (a hand-back at shutdown, a cancelled run's day), each only when present;
--   3. the events, with the batches' live counts, and the end of every batch this call settled, in one INSERT.
-- The claim comes before anything that locks a batch row: it is the only part that can wait on another
-- transaction (the one-running-per-day index), and must not wait while holding a batch row. Claimed and finished
-- rows never share a day: a day with a running task is not claimable.
-- p_started is the batch this transaction expanded (batch_expand_claim): its "running" event comes first, in the
-- same INSERT. Writing it earlier, before the claim, would hold the event lock while the claim may wait on another
-- daemon's claim of the same date, which waits for the event lock: a deadlock.
-- p_notify = false: the caller NOTIFYs datesync_event itself after its commit (see datesync.notify).
DROP FUNCTION IF EXISTS datesync.task_finish(text, bigint[], integer[], text[], text[], bigint[], float8[], bigint[],
                                             integer, float8, text[], bigint);  -- before p_notify
CREATE OR REPLACE FUNCTION datesync.task_finish(p_worker text, p_ids bigint[], p_attempts integer[],
                                   p_states text[], p_errors text[], p_rows bigint[],
                                   p_retry_in float8[], p_released bigint[],
                                   p_claim_limit integer, p_lease float8, p_sources text[],
                                   p_started bigint DEFAULT NULL, p_notify boolean DEFAULT true)
RETURNS TABLE (kind text, id bigint, batch_id bigint, source text, day date, state text, attempt integer,
               max_attempts integer, batch_state text, batch_created_at timestamptz)
LANGUAGE plpgsql
-- Walk task_claimable in order and stop after the limit, and find outcomes by primary key: with statistics that
-- lag behind a freshly expanded batch the planner picked a bitmap scan and sort of the whole queue (4.5 ms per
-- claim at 5,000 queued), or a bitmap scan of every running entry, dead ones included, for the outcomes. The plan
-- is generic (planned once per connection, not per call, which cost more than running it), so the statements
-- below are written to leave it no plan that reads more than the rows at hand; the generic plan guesses a
-- thousand claimed rows where there are ten.
SET enable_bitmapscan = off
SET enable_seqscan = off
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    claimed datesync.task[];
    changed datesync.task[];
    released datesync.task[];
    ended jsonb;
    moved jsonb;
    stale jsonb;
    live datesync.batch_live[];
    ending bigint[];
BEGIN
    WITH candidate AS (
        SELECT t.id, t.source, t.day, t.force
        FROM datesync.task t
        WHERE t.state = 'queued' AND t.run_after <= now() AND t.source = ANY(p_sources)
          AND NOT EXISTS (SELECT 1 FROM datesync.task r
                          WHERE r.source = t.source AND r.day = t.day AND r.state = 'running')
        ORDER BY t.run_after, t.id
        LIMIT greatest(p_claim_limit, 0)
        FOR UPDATE SKIP LOCKED
    ), picked AS (
        -- One date per (source, day); a date already synced (and not forced) is skipped, not run. The day is
        -- probed per candidate (a join would be planned for the generic plan's guess of a thousand candidates:
        -- a scan of every day).
        SELECT DISTINCT ON (c.source, c.day) c.id,
               CASE WHEN NOT c.force AND (SELECT d.status = 'success' FROM datesync.day d
                                          WHERE d.source = c.source AND d.day = c.day)
                    THEN 'skipped' ELSE 'running' END::datesync.task_state AS new_state
        FROM candidate c
        ORDER BY c.source, c.day, c.id
    ), claim AS (
        UPDATE datesync.task t
        SET state = p.new_state,
            attempt = t.attempt + (p.new_state = 'running')::int,
            lease_owner = CASE WHEN p.new_state = 'running' THEN p_worker END,
            lease_expires_at = CASE WHEN p.new_state = 'running' THEN now() + make_interval(secs => p_lease) END,
            started_at = now(),
            -- A skip is decided on this statement's snapshot, which may be younger than the transaction (and
            -- now()): the success it relies on can have committed in between. Its own clock keeps it after that.
            finished_at = CASE WHEN p.new_state = 'skipped' THEN clock_timestamp() END
        FROM picked p
        -- The array gives the planner a primary-key probe per row, whatever it guesses the row count to be.
        WHERE t.id = ANY(ARRAY(SELECT x.id FROM picked x)) AND t.id = p.id
        RETURNING t.*
    ), marked AS (
        INSERT INTO datesync.day AS d (source, day, status, batch_id, task_id, attempts, started_at)
        SELECT u.source, u.day, 'running', u.batch_id, u.id, u.attempt, now() FROM claim u WHERE u.state = 'running'
        ON CONFLICT (source, day) DO UPDATE
        SET status = 'running', batch_id = EXCLUDED.batch_id, task_id = EXCLUDED.task_id,
            attempts = EXCLUDED.attempts, started_at = EXCLUDED.started_at, updated_at = now(),
            prior_status = CASE WHEN d.status = 'running' THEN d.prior_status ELSE d.status END
    ), result AS (
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
        WHERE t.id = ANY(p_ids) AND t.id = r.id AND t.attempt = r.attempt AND t.state = 'running'
          AND t.lease_owner = p_worker
        RETURNING t.*
    ), settled AS (
        UPDATE datesync.day d
        SET status = CASE WHEN f.state = 'succeeded' THEN 'success'
                          WHEN f.state = 'cancelled' THEN d.status  -- day_restore, below
                          ELSE 'failed' END::datesync.day_status,
            rows_synced = CASE WHEN f.state = 'succeeded' THEN f.rows_synced ELSE d.rows_synced END,
            error = CASE WHEN f.state = 'succeeded' THEN NULL ELSE coalesce(f.error, d.error) END,
            synced_at = CASE WHEN f.state = 'succeeded' THEN now() ELSE d.synced_at END,
            stale_since = CASE WHEN f.state = 'succeeded' THEN NULL ELSE d.stale_since END,
            attempts = f.attempt, batch_id = f.batch_id, task_id = f.id, updated_at = now()
        FROM fin f
        WHERE d.source = f.source AND d.day = f.day
    )
    SELECT coalesce((SELECT array_agg(u) FROM claim u), '{}'), coalesce((SELECT array_agg(f) FROM fin f), '{}')
    INTO claimed, changed;
    -- Dates the outcomes released or failed downstream, and days they made stale (task_after_settle).
    moved := datesync.dependency_notes('datesync.moved');
    stale := datesync.dependency_notes('datesync.stale');
    IF moved <> '[]' THEN
        changed := changed || ARRAY(SELECT t FROM datesync.task t
                                    WHERE t.id IN (SELECT jsonb_array_elements_text(moved)::bigint) ORDER BY t.id);
    END IF;

    -- A cancelled run leaves its day as it found it (or absent, if it had never been synced).
    IF EXISTS (SELECT 1 FROM unnest(changed) c WHERE c.state = 'cancelled') THEN
        PERFORM datesync.day_restore(array_agg(c.source), array_agg(c.day))
        FROM unnest(changed) c WHERE c.state = 'cancelled';
    END IF;
    -- Handed back at shutdown: queued at once, the attempt not counted, the day as it was.
    IF coalesce(cardinality(p_released), 0) > 0 THEN
        WITH rel AS (
            UPDATE datesync.task t
            SET state = 'queued', attempt = greatest(t.attempt - 1, 0), run_after = now(),
                lease_owner = NULL, lease_expires_at = NULL
            WHERE t.id = ANY(p_released) AND t.state = 'running' AND t.lease_owner = p_worker
            RETURNING t.*
        )
        SELECT coalesce(array_agg(r), '{}') INTO released FROM rel r;
        PERFORM datesync.day_restore(array_agg(r.source), array_agg(r.day)) FROM unnest(released) r;
        changed := changed || released;
    END IF;
    IF cardinality(claimed) + cardinality(changed) = 0 AND p_started IS NULL AND stale = '[]' THEN
        RETURN;
    END IF;

    -- The batches this call may have settled: a date of theirs is done and, as far as this transaction sees,
    -- none is left to run. They are folded (datesync.batch_fold, skipping a batch whose row another transaction
    -- holds) and ended below. The outcomes of transactions still running are not seen: when the last dates of a
    -- batch finish at once, none of their transactions sees it settled, and the daemon's call after its commit
    -- (batch_end_settled) ends it.
    -- The touched batches' live counts are read once, here: a fold below moves counts into the batch row without
    -- changing their sums, so the events' counts come from the same reading.
    live := ARRAY(SELECT l FROM datesync.batch_live l
                  WHERE l.id IN (SELECT c.batch_id FROM unnest(changed || claimed) c));
    ending := ARRAY(SELECT l.id FROM unnest(live) l
                    WHERE l.id IN (SELECT c.batch_id FROM unnest(changed || claimed) c
                                   WHERE c.state NOT IN ('running', 'queued', 'waiting'))
                      AND l.state = 'running' AND l.queued = 0 AND l.running = 0 AND l.waiting = 0);
    IF ending <> '{}' THEN
        ending := datesync.batch_fold(ending, true);
    END IF;

    -- Last (see event_serialize): the "running" event of the batch this transaction expanded (p_started), one
    -- event per task row with its batch's live counts (as this transaction sees them), then the final event of
    -- each batch ended here, in the same statement.
    -- datesync.engine_on() and _off(), inlined: each call of a SQL function is planned anew (3 % of a round).
    PERFORM set_config('datesync.engine', 'on', true);
    IF NOT p_notify THEN
        PERFORM set_config('datesync.notify_after_commit', 'datesync_event', true);
    END IF;
    WITH e AS (
        UPDATE datesync.batch b
        SET state = datesync.batch_end_state(b.cancel_requested, b.failed), finished_at = now()
        WHERE b.id = ANY(ending) AND b.state = 'running' AND b.queued = 0 AND b.running = 0 AND b.waiting = 0
        RETURNING b.*
    ), logged AS (
        INSERT INTO datesync.event (batch_id, task_id, day, kind, state, attempt, error, data)
        SELECT x.batch_id, x.task_id, x.day, x.kind, x.state, x.attempt, x.error, x.data
        FROM (
            SELECT 0 AS part, s.id AS batch_id, NULL::bigint AS task_id, NULL::date AS day, 'batch' AS kind,
                   'running' AS state, NULL::integer AS attempt, NULL::text AS error,
                   jsonb_build_object('days', s.days) AS data
            FROM datesync.batch s WHERE s.id = p_started
            UNION ALL
            -- The expanded batch's dates that wait for upstream dates, with what they wait for.
            SELECT 0, w.batch_id, w.id, w.day, 'task', 'waiting', 0, NULL,
                   jsonb_build_object('waiting_for', datesync.waiting_for(w.source, w.day, s.after_batches))
            FROM datesync.batch s JOIN datesync.task w ON w.batch_id = s.id AND w.state = 'waiting'
            WHERE s.id = p_started AND s.waiting > 0
            UNION ALL
            SELECT 1, t.batch_id, t.id, t.day, 'task', t.state::text, t.attempt, t.error,
                   jsonb_build_object('counts', jsonb_build_object(
                       'waiting', b.waiting, 'queued', b.queued, 'running', b.running, 'succeeded', b.succeeded,
                       'failed', b.failed, 'skipped', b.skipped, 'cancelled', b.cancelled, 'days', b.days)) AS data
            FROM unnest(changed || claimed) t JOIN unnest(live) b ON b.id = t.batch_id
            UNION ALL
            -- Days that a re-synced upstream date made stale, in the re-sync's batch.
            SELECT 1, (x ->> 'batch_id')::bigint, NULL, (x ->> 'day')::date, 'day', 'stale', NULL, NULL,
                   jsonb_build_object('source', x ->> 'source', 'upstream', x ->> 'upstream',
                                      'upstream_day', x ->> 'upstream_day')
            FROM jsonb_array_elements(stale) x
            UNION ALL
            SELECT 2, f.id, NULL, NULL, 'batch', f.state::text, NULL, NULL,
                   jsonb_build_object('final', true, 'days', f.days, 'succeeded', f.succeeded, 'failed', f.failed,
                                      'skipped', f.skipped, 'cancelled', f.cancelled)
            FROM e f
        ) x
        ORDER BY x.part, x.batch_id, x.day NULLS FIRST
    )
    SELECT jsonb_object_agg(f.id::text, f.state) INTO ended FROM e f;
    PERFORM set_config('datesync.engine', '', true);

    RETURN QUERY
        SELECT k.kind, c.id, c.batch_id, c.source, c.day, c.state::text, c.attempt, c.max_attempts,
               ended ->> c.batch_id::text, b.created_at
        FROM (SELECT 'claimed' AS kind, x FROM unnest(claimed) x
              UNION ALL SELECT 'finished', x FROM unnest(changed) x) k
        CROSS JOIN LATERAL (SELECT (k.x).*) c
        JOIN datesync.batch b ON b.id = c.batch_id;
END $$;
