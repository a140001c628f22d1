-- Retention (DATESYNC_RETENTION): a batch finished longer ago than the retention loses its task rows and its
-- event rows but one, in small transactions beside the engine (daemon/retention.py). What stays: the batch row with
-- its final counts, its latest final event (so that its event stream still ends with that event, and a client that
-- saw it still gets 204), every day row (the ledger: what is synced, and why a date failed), and the
-- Idempotency-Keys that named it (a retried request keeps answering with the same, now pruned, batch).

-- When retention removed the batch's tasks and events; NULL while they are kept. Never set by the API.
ALTER TABLE datesync.batch ADD COLUMN pruned_at timestamptz;
-- The pruner's look-up: finished batches not pruned yet, oldest first. Pruned ones leave the index, so it stays
-- as small as the retention window.
CREATE INDEX batch_prunable ON datesync.batch (finished_at) WHERE finished_at IS NOT NULL AND pruned_at IS NULL;

-- One row: every event id up to events_pruned_through may have been deleted. A reader resuming from an id below it
-- cannot replay without a gap (web/events: it gets a fresh snapshot instead).
CREATE TABLE datesync.retention (
    singleton             boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    events_pruned_through bigint NOT NULL DEFAULT 0,
    updated_at            timestamptz NOT NULL DEFAULT now()
);
INSERT INTO datesync.retention DEFAULT VALUES;

-- batch_progress shows pruned_at too (added at the end: CREATE OR REPLACE VIEW may only append columns).
CREATE OR REPLACE VIEW datesync.batch_progress AS
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
       b.finished_at,
       b.pruned_at
FROM datesync.batch b;

-- A hand DELETE of tasks still takes them out of their batch's counts; the pruner's does not: its batches keep
-- their final counts. The pruner says so with a transaction-local setting, as the engine's functions do.
CREATE OR REPLACE FUNCTION datesync.task_count_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('datesync.retention', true) = 'on' THEN
        RETURN NULL;
    END IF;
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

-- One step of pruning, one transaction: up to p_limit task rows and p_limit event rows of one batch that finished
-- before p_cutoff; the batch is marked pruned in the step that leaves nothing more to delete. Returns the batch and
-- what was deleted; no row when no batch is due.
--
-- Beside the engine and other pruners:
-- * Two pruners never work on the same batch at once: each picks a batch whose advisory lock it can take (never
--   waiting), so several daemons pruning at once share the batches instead of queueing on each other's rows.
-- * No batch row is locked until the end (pruned_at), after the task rows: the lock order of every transaction
--   (task rows, day rows, batch rows, events). Only final tasks are deleted: a retry of the batch that commits
--   first turns its failed tasks back to queued, and those rows are then skipped (re-checked after the wait).
-- * Deleting events takes no lock on the event log (event_serialize guards inserts only), so writers never wait.
--   The deleted ids are recorded in datesync.retention before commit, so a reader that resumes from below them
--   knows that its replay would have a gap.
-- * A failed date's error is kept on its day row if the day row was this task's outcome and had none.
CREATE FUNCTION datesync.batch_prune_step(p_cutoff timestamptz, p_limit integer)
RETURNS TABLE (batch_id bigint, tasks bigint, events bigint, pruned boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    b bigint;
    keep bigint;
    n_tasks bigint;
    n_events bigint;
    last_event bigint;
    finished boolean;
BEGIN
    -- The lock is tried on the oldest candidates in order, stopping at the first taken: in the outer query, so that
    -- it is not tried on every due batch before the sort.
    SELECT c.id INTO b
    FROM (SELECT x.id FROM datesync.batch x
          WHERE x.finished_at < p_cutoff AND x.pruned_at IS NULL
            AND x.state IN ('succeeded', 'failed', 'cancelled')
          ORDER BY x.finished_at, x.id
          LIMIT 32) c
    WHERE pg_try_advisory_xact_lock(7355611, hashtext(c.id::text))
    LIMIT 1;
    IF b IS NULL THEN
        RETURN;
    END IF;
    PERFORM set_config('datesync.retention', 'on', true);  -- task_count_delete: the batch keeps its counts
    WITH gone AS (
        DELETE FROM datesync.task t
        WHERE t.id IN (SELECT y.id FROM datesync.task y
                       WHERE y.batch_id = b AND y.state IN ('succeeded', 'failed', 'skipped', 'cancelled')
                       ORDER BY y.id LIMIT p_limit)
          AND t.state IN ('succeeded', 'failed', 'skipped', 'cancelled')
        RETURNING t.id, t.source, t.day, t.state, t.error
    ), noted AS (
        UPDATE datesync.day d SET error = g.error
        FROM gone g
        WHERE g.state = 'failed' AND g.error IS NOT NULL
          AND d.source = g.source AND d.day = g.day AND d.task_id = g.id AND d.status = 'failed' AND d.error IS NULL
    )
    SELECT count(*) INTO n_tasks FROM gone;
    PERFORM set_config('datesync.retention', '', true);

    -- The batch's latest final event stays: its stream ends with it.
    SELECT max(e.id) INTO keep FROM datesync.event e
    WHERE e.batch_id = b AND e.kind = 'batch' AND e.data -> 'final' = 'true'::jsonb;
    WITH gone AS (
        DELETE FROM datesync.event e
        WHERE e.id IN (SELECT y.id FROM datesync.event y
                       WHERE y.batch_id = b AND y.id IS DISTINCT FROM keep ORDER BY y.id LIMIT p_limit)
        RETURNING e.id
    )
    SELECT count(*), max(id) INTO n_events, last_event FROM gone;

    finished := NOT EXISTS (SELECT 1 FROM datesync.task y
                            WHERE y.batch_id = b AND y.state IN ('succeeded', 'failed', 'skipped', 'cancelled'))
                AND NOT EXISTS (SELECT 1 FROM datesync.event y WHERE y.batch_id = b AND y.id IS DISTINCT FROM keep);
    IF finished THEN
        UPDATE datesync.batch x SET pruned_at = now()
        WHERE x.id = b AND x.pruned_at IS NULL AND x.state IN ('succeeded', 'failed', 'cancelled');
        finished := FOUND;
    END IF;
    IF last_event IS NOT NULL THEN
        UPDATE datesync.retention
        SET events_pruned_through = greatest(events_pruned_through, last_event), updated_at = now();
    END IF;
    RETURN QUERY SELECT b, n_tasks, n_events, finished;
END $$;
