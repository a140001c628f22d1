-- Tasks: claiming, leases, finishing. Every transition is guarded by the state (and lease owner) it expects.

-- name: task_claim
-- Lease up to $2 runnable tasks of the given sources to daemon $1, at most one per (source, day), none whose
-- (source, day) is already running. A date already synced (and not forced) is marked skipped instead.
WITH candidate AS (
    SELECT t.id, t.source, t.day
    FROM datesync.task t
    WHERE t.state = 'queued' AND t.run_after <= now() AND t.source = ANY($4::text[])
      AND NOT EXISTS (SELECT 1 FROM datesync.task r
                      WHERE r.source = t.source AND r.day = t.day AND r.state = 'running')
    ORDER BY t.run_after, t.id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), picked AS (
    SELECT DISTINCT ON (c.source, c.day) c.id, d.status AS day_status
    FROM candidate c
    LEFT JOIN datesync.day d ON d.source = c.source AND d.day = c.day
    ORDER BY c.source, c.day, c.id
), claimed AS (
    UPDATE datesync.task t
    SET state = s.state,
        attempt = t.attempt + (s.state = 'running')::int,
        lease_owner = CASE WHEN s.state = 'running' THEN $1 END,
        lease_expires_at = CASE WHEN s.state = 'running' THEN now() + make_interval(secs => $3) END,
        started_at = now(),
        finished_at = CASE WHEN s.state = 'skipped' THEN now() END
    FROM (SELECT p.id,
                 CASE WHEN p.day_status = 'success' AND NOT t2.force THEN 'skipped'
                      ELSE 'running' END::datesync.task_state AS state
          FROM picked p JOIN datesync.task t2 ON t2.id = p.id) s
    WHERE t.id = s.id
    RETURNING t.id, t.batch_id, t.source, t.day, t.state::text AS state, t.attempt, t.max_attempts,
              t.force, t.run_after
), marked AS (
    INSERT INTO datesync.day AS d (source, day, status, batch_id, task_id, attempts, started_at)
    SELECT source, day, 'running', batch_id, id, attempt, now() FROM claimed WHERE state = 'running'
    ON CONFLICT (source, day) DO UPDATE
    SET status = 'running', batch_id = EXCLUDED.batch_id, task_id = EXCLUDED.task_id,
        attempts = EXCLUDED.attempts, started_at = EXCLUDED.started_at, updated_at = now()
)
SELECT * FROM claimed;

-- name: task_finish_many
-- Record the outcome of attempts run by daemon $1: succeeded, failed (for good) or queued (retry after a
-- delay). Rows whose lease was lost (cancel, takeover) are left alone and not returned.
WITH result AS (
    SELECT * FROM unnest($2::bigint[], $3::text[], $4::text[], $5::bigint[], $6::float8[])
        AS r(id, state, error, rows_synced, retry_in)
), fin AS (
    UPDATE datesync.task t
    SET state = r.state::datesync.task_state,
        error = r.error,
        rows_synced = r.rows_synced,
        run_after = CASE WHEN r.state = 'queued' THEN now() + make_interval(secs => r.retry_in) ELSE t.run_after END,
        finished_at = CASE WHEN r.state = 'queued' THEN NULL ELSE now() END,
        lease_owner = NULL,
        lease_expires_at = NULL
    FROM result r
    WHERE t.id = r.id AND t.state = 'running' AND t.lease_owner = $1
    RETURNING t.id, t.batch_id, t.source, t.day, t.state::text AS state, t.attempt, t.error, t.rows_synced,
              t.run_after, extract(epoch FROM now() - t.started_at) AS seconds
), d AS (
    UPDATE datesync.day d
    SET status = CASE WHEN fin.state = 'succeeded' THEN 'success'
                      WHEN fin.state = 'cancelled' THEN d.status
                      ELSE 'failed' END::datesync.day_status,
        rows_synced = CASE WHEN fin.state = 'succeeded' THEN fin.rows_synced ELSE d.rows_synced END,
        error = CASE WHEN fin.state = 'succeeded' THEN NULL ELSE coalesce(fin.error, d.error) END,
        synced_at = CASE WHEN fin.state = 'succeeded' THEN now() ELSE d.synced_at END,
        attempts = fin.attempt,
        batch_id = fin.batch_id,
        task_id = fin.id,
        updated_at = now()
    FROM fin
    WHERE d.source = fin.source AND d.day = fin.day
)
SELECT * FROM fin;

-- name: task_heartbeat
-- Extend the leases daemon $1 holds; returns each still-held task and whether its batch asks to cancel.
UPDATE datesync.task t
SET lease_expires_at = now() + make_interval(secs => $2)
FROM datesync.batch b
WHERE t.lease_owner = $1 AND t.state = 'running' AND b.id = t.batch_id
RETURNING t.id, b.cancel_requested;

-- name: task_release
-- Hand back tasks of daemon $1 on shutdown: queued again at once; the interrupted attempt does not count.
UPDATE datesync.task
SET state = 'queued', attempt = greatest(attempt - 1, 0), run_after = now(),
    lease_owner = NULL, lease_expires_at = NULL
WHERE id = ANY($2::bigint[]) AND state = 'running' AND lease_owner = $1
RETURNING id, batch_id, source, day, state::text AS state, attempt;

-- name: task_requeue_expired
-- Take back tasks whose daemon stopped renewing its lease (crash, partition): the attempt counts.
UPDATE datesync.task
SET state = CASE WHEN attempt >= max_attempts THEN 'failed' ELSE 'queued' END::datesync.task_state,
    error = CASE WHEN attempt >= max_attempts
                 THEN 'lease expired: daemon ' || lease_owner || ' stopped during the last attempt' ELSE error END,
    finished_at = CASE WHEN attempt >= max_attempts THEN now() END,
    run_after = now(),
    lease_owner = NULL,
    lease_expires_at = NULL
WHERE state = 'running' AND lease_expires_at < now()
RETURNING id, batch_id, source, day, state::text AS state, attempt, error;

-- name: task_cancel_queued
-- Cancel the queued tasks of the given batches.
UPDATE datesync.task
SET state = 'cancelled', finished_at = now()
WHERE batch_id = ANY($1::bigint[]) AND state = 'queued'
RETURNING id, batch_id, source, day, state::text AS state, attempt;

-- name: task_next_run_after
-- When the earliest queued task becomes runnable (for the loop's sleep).
SELECT min(run_after) - now() AS wait FROM datesync.task WHERE state = 'queued';

-- name: day_mark_failed
-- Mark days whose task failed through lease expiry.
UPDATE datesync.day d
SET status = 'failed', error = r.error, updated_at = now()
FROM unnest($1::text[], $2::date[], $3::text[]) AS r(source, day, error)
WHERE d.source = r.source AND d.day = r.day AND d.status = 'running';
