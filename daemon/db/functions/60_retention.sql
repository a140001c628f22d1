-- Retention (DATESYNC_RETENTION, daemon/retention.py): the pruning of finished batches' tasks and events.
--
-- The current definition of each function here: this file is re-applied (after the versioned migrations, in
-- file-name order, under the migration lock) whenever its checksum changes. Edit it in place; versioned
-- migrations (migrations/NNNN_*.sql) hold DDL and data changes only. Its tables: migrations/0008_retention.sql.

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
CREATE OR REPLACE FUNCTION datesync.batch_prune_step(p_cutoff timestamptz, p_limit integer)
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
