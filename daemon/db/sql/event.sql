-- The progress log. Insert events last in a transaction: the insert takes the lock that keeps ids in commit
-- order (see datesync.event_serialize), and it is held until commit.

-- name: event_insert_tasks
-- One event per task transition, with the batch's counts so far.
WITH e AS (
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::date[], $4::text[], $5::int[], $6::text[])
        AS e(batch_id, task_id, day, state, attempt, error)
), counts AS (
    SELECT t.batch_id, jsonb_build_object(
        'queued', count(*) FILTER (WHERE t.state = 'queued'),
        'running', count(*) FILTER (WHERE t.state = 'running'),
        'succeeded', count(*) FILTER (WHERE t.state = 'succeeded'),
        'failed', count(*) FILTER (WHERE t.state = 'failed'),
        'skipped', count(*) FILTER (WHERE t.state = 'skipped'),
        'cancelled', count(*) FILTER (WHERE t.state = 'cancelled')) AS counts
    FROM datesync.task t WHERE t.batch_id IN (SELECT DISTINCT batch_id FROM e)
    GROUP BY t.batch_id
)
INSERT INTO datesync.event (batch_id, task_id, day, kind, state, attempt, error, data)
SELECT e.batch_id, e.task_id, e.day, 'task', e.state, e.attempt, e.error,
       jsonb_build_object('counts', coalesce(c.counts, '{}'::jsonb))
FROM e LEFT JOIN counts c ON c.batch_id = e.batch_id
ORDER BY e.batch_id, e.day;

-- name: event_insert_batch
-- One event for a batch transition.
INSERT INTO datesync.event (batch_id, kind, state, data) VALUES ($1, 'batch', $2, $3::jsonb);

-- name: event_insert_progress
-- A long date's own progress note (ctx.progress).
INSERT INTO datesync.event (batch_id, task_id, day, kind, state, attempt, data)
VALUES ($1, $2, $3, 'task', 'running', $4, $5::jsonb);
