-- Fewer index writes per date. A task's state is in the predicate of its partial indexes, so every claim and
-- finish writes a new entry into each index whose predicate the new row matches; each one costs the hot path.
--
-- Leases are read from task_one_running_per_day (running rows only: at most the daemons' total concurrency),
-- so a second index of running rows only doubled the writes of every claim.
DROP INDEX datesync.task_lease_expiry;
-- A batch's unfinished tasks are read only to cancel its queued ones; running ones are found through the
-- heartbeat. Queued rows only: a claim no longer writes here.
DROP INDEX datesync.task_batch_unfinished;
CREATE INDEX task_batch_queued ON datesync.task (batch_id) WHERE state = 'queued';
-- Day rows change status at every claim and finish; with status unindexed those updates can stay on their page
-- (HOT) and write no index at all. The counts that read status scan one row per (source, date), a few
-- thousand per source and decade.
DROP INDEX datesync.day_status;
ALTER TABLE datesync.day SET (fillfactor = 80);

-- The hot path in three statements where it took about twenty. Each statement pays the executor's start-up
-- (plans, check constraints, triggers), and at ten dates a round that fixed cost was most of the round:
--   1. claim and finish: task rows and day rows in one statement, so the counting trigger runs once, at its end
--      (it fires once per statement and table, with every claimed and finished row in its transition tables);
--   2. the rare cases (a hand-back at shutdown, a cancelled run's day), each only when present;
--   3. the events, with the batches' live counts, and the end of every batch this call settled, in one INSERT.
-- The claim still comes before anything that locks a batch row (that happens at the end of statement 1): it is
-- the only part that can wait on another transaction (the one-running-per-day index), and must not wait while
-- holding a batch row. Claimed and finished rows never share a day: a day with a running task is not claimable.
CREATE OR REPLACE FUNCTION datesync.task_finish(p_worker text, p_ids bigint[], p_attempts integer[],
                                                p_states text[], p_errors text[], p_rows bigint[],
                                                p_retry_in float8[], p_released bigint[],
                                                p_claim_limit integer, p_lease float8, p_sources text[])
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
            attempts = f.attempt, batch_id = f.batch_id, task_id = f.id, updated_at = now()
        FROM fin f
        WHERE d.source = f.source AND d.day = f.day
    )
    SELECT coalesce((SELECT array_agg(u) FROM claim u), '{}'), coalesce((SELECT array_agg(f) FROM fin f), '{}')
    INTO claimed, changed;

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
    IF cardinality(claimed) + cardinality(changed) = 0 THEN
        RETURN;
    END IF;

    -- Last (see event_serialize): one event per task row with its batch's counts, then the final event of each
    -- batch whose last date this call settled, which it ends in the same statement.
    PERFORM datesync.engine_on();
    WITH e AS (
        UPDATE datesync.batch b
        SET state = CASE WHEN b.cancel_requested THEN 'cancelled'
                         WHEN b.failed > 0 THEN 'failed'
                         ELSE 'succeeded' END::datesync.batch_state,
            finished_at = now()
        WHERE b.id IN (SELECT c.batch_id FROM unnest(changed || claimed) c WHERE c.state NOT IN ('running', 'queued'))
          AND b.state = 'running' AND b.queued = 0 AND b.running = 0
        RETURNING b.*
    ), logged AS (
        INSERT INTO datesync.event (batch_id, task_id, day, kind, state, attempt, error, data)
        SELECT x.batch_id, x.task_id, x.day, x.kind, x.state, x.attempt, x.error, x.data
        FROM (
            SELECT 0 AS part, t.batch_id, t.id AS task_id, t.day, 'task' AS kind, t.state::text AS state,
                   t.attempt, t.error,
                   jsonb_build_object('counts', jsonb_build_object(
                       'queued', b.queued, 'running', b.running, 'succeeded', b.succeeded, 'failed', b.failed,
                       'skipped', b.skipped, 'cancelled', b.cancelled, 'days', b.days)) AS data
            FROM unnest(changed || claimed) t JOIN datesync.batch b ON b.id = t.batch_id
            UNION ALL
            SELECT 1, f.id, NULL, NULL, 'batch', f.state::text, NULL, NULL,
                   jsonb_build_object('final', true, 'days', f.days, 'succeeded', f.succeeded, 'failed', f.failed,
                                      'skipped', f.skipped, 'cancelled', f.cancelled)
            FROM e f
        ) x
        ORDER BY x.part, x.batch_id, x.day
    )
    SELECT jsonb_object_agg(f.id::text, f.state) INTO ended FROM e f;
    PERFORM datesync.engine_off();

    RETURN QUERY
        SELECT k.kind, c.id, c.batch_id, c.source, c.day, c.state::text, c.attempt, c.max_attempts,
               ended ->> c.batch_id::text, b.created_at
        FROM (SELECT 'claimed' AS kind, x FROM unnest(claimed) x
              UNION ALL SELECT 'finished', x FROM unnest(changed) x) k
        CROSS JOIN LATERAL (SELECT (k.x).*) c
        JOIN datesync.batch b ON b.id = c.batch_id;
END $$;

-- Claiming alone is the same call with no outcomes.
CREATE OR REPLACE FUNCTION datesync.task_claim(p_worker text, p_limit integer, p_lease float8, p_sources text[])
RETURNS TABLE (kind text, id bigint, batch_id bigint, source text, day date, state text, attempt integer,
               max_attempts integer, batch_state text, batch_created_at timestamptz)
LANGUAGE sql AS $$
    SELECT * FROM datesync.task_finish(p_worker, '{}', '{}', '{}', '{}', '{}', '{}', '{}', p_limit, p_lease,
                                       p_sources);
$$;

DROP FUNCTION datesync.task_log_and_settle(datesync.task[], datesync.task[]);
DROP FUNCTION datesync.task_claim_rows(text, integer, float8, text[]);
DROP FUNCTION datesync.task_finish_rows(text, bigint[], integer[], text[], text[], bigint[], float8[], bigint[]);

-- PL/pgSQL plans a statement with parameters anew on every call for as long as its generic plan looks dearer
-- than a custom one, which for these statements was always: planning cost more than running. Their plans do not
-- depend on the values (every lookup is by key), so the generic plan is planned once per connection and kept.
ALTER FUNCTION datesync.batch_expand(integer) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION datesync.batch_request(text, date, date, boolean, text, text)
    SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION datesync.batch_end_settled(bigint[]) SET plan_cache_mode = force_generic_plan;
