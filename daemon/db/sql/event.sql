-- The progress log. Insert events last in a transaction: the insert takes the lock that keeps ids in commit
-- order (see datesync.event_serialize), and it is held until commit.

-- name: event_insert_tasks
-- One event per task transition, with its batch's live counts.
INSERT INTO datesync.event (batch_id, task_id, day, kind, state, attempt, error, data)
SELECT e.batch_id, e.task_id, e.day, 'task', e.state, e.attempt, e.error,
       jsonb_build_object('counts', jsonb_build_object(
           'queued', b.queued, 'running', b.running, 'succeeded', b.succeeded, 'failed', b.failed,
           'skipped', b.skipped, 'cancelled', b.cancelled, 'days', b.days))
FROM unnest($1::bigint[], $2::bigint[], $3::date[], $4::text[], $5::int[], $6::text[])
    AS e(batch_id, task_id, day, state, attempt, error)
JOIN datesync.batch b ON b.id = e.batch_id
ORDER BY e.batch_id, e.day;

-- name: event_insert_batch
-- One event for a batch transition.
INSERT INTO datesync.event (batch_id, kind, state, data) VALUES ($1, 'batch', $2, $3::jsonb);

-- name: event_insert_progress
-- A long date's own progress note (ctx.progress).
INSERT INTO datesync.event (batch_id, task_id, day, kind, state, attempt, data)
VALUES ($1, $2, $3, 'task', 'running', $4, $5::jsonb);
