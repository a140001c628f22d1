-- The progress log. Insert events last in a transaction: the insert takes the event lock (shared; see
-- datesync.event_serialize), held until commit, and readers' horizon waits for it.

-- name: event_log_tasks
-- One event per task just moved by this transaction (ids $1), and per date the moves released or failed
-- downstream (datesync.task_after_settle), written by the same function as the hot path's.
SELECT datesync.event_log_tasks(ARRAY(
    SELECT t FROM datesync.task t
    WHERE t.id = ANY($1::bigint[])
       OR t.id IN (SELECT jsonb_array_elements_text(datesync.dependency_notes('datesync.moved'))::bigint)
    ORDER BY t.id));

-- name: event_insert_batch
-- One event for a batch transition.
INSERT INTO datesync.event (batch_id, kind, state, data) VALUES ($1, 'batch', $2, $3::jsonb);

-- name: event_insert_progress
-- A long date's own progress note (ctx.progress).
INSERT INTO datesync.event (batch_id, task_id, day, kind, state, attempt, data)
VALUES ($1, $2, $3, 'task', 'running', $4, $5::jsonb);
