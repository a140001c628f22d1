-- Tasks: claiming, leases, finishing. Every transition is guarded by the state (and lease owner) it expects.

-- name: task_claim
-- Lease up to $2 runnable tasks of sources $4 to daemon $1 (datesync.task_claim in the schema); skipped dates
-- come back too, and batch_state is set when the call ended their batch. Its events are not NOTIFYed: the daemon
-- does that after the commit (EventNudge in daemon/sync/store.py; why in datesync.notify).
SELECT * FROM datesync.task_claim($1, $2, $3, $4::text[], false);

-- name: task_finish
-- Record attempts' outcomes, hand back released tasks, and claim up to $8 new dates, in one transaction. Its
-- events are NOTIFYed by the daemon after the commit, as task_claim's.
SELECT * FROM datesync.task_finish($1, $2::bigint[], $3::int[], $4::text[], $5::text[], $6::bigint[],
                                   $7::float8[], $8::bigint[], $9, $10, $11::text[], NULL, false);

-- name: task_heartbeat
-- Extend daemon $1's leases on tasks $3 (each at attempt $4): returns each one still held and whether its batch
-- asks to cancel. A task missing from the answer was taken over (or fenced by a newer attempt).
UPDATE datesync.task t
SET lease_expires_at = clock_timestamp() + make_interval(secs => $2)
FROM datesync.batch b, unnest($3::bigint[], $4::int[]) AS h(id, attempt)
WHERE t.id = h.id AND t.attempt = h.attempt AND t.lease_owner = $1 AND t.state = 'running'
  AND b.id = t.batch_id
RETURNING t.id, b.cancel_requested;

-- name: task_requeue_expired
-- Take back tasks whose daemon stopped renewing its lease (crash, partition): the attempt counts. Never our
-- own ($1): a date this daemon still runs is not lost because its heartbeat was late.
WITH expired AS (
    UPDATE datesync.task
    SET state = CASE WHEN attempt >= max_attempts THEN 'failed' ELSE 'queued' END::datesync.task_state,
        error = CASE WHEN attempt >= max_attempts
                     THEN 'lease expired: daemon ' || lease_owner || ' stopped during the last attempt'
                     ELSE error END,
        finished_at = CASE WHEN attempt >= max_attempts THEN now() END,
        run_after = now(),
        lease_owner = NULL,
        lease_expires_at = NULL
    WHERE state = 'running' AND lease_expires_at < now() AND lease_owner <> $1
    RETURNING id, batch_id, source, day, state::text AS state, attempt, error
), restored AS (
    SELECT datesync.day_restore(array_agg(source), array_agg(day)) FROM expired WHERE state = 'queued'
)
SELECT e.* FROM expired e LEFT JOIN restored ON true;

-- name: task_cancel_queued
-- Cancel the queued and waiting tasks of the given batches.
UPDATE datesync.task
SET state = 'cancelled', finished_at = now()
WHERE batch_id = ANY($1::bigint[]) AND state IN ('queued', 'waiting')
RETURNING id, batch_id, source, day, state::text AS state, attempt;

-- name: task_next_run_after
-- When the loop must look again: the earliest queued task becoming runnable, or another daemon's lease
-- running out (so that a dead daemon's dates are taken over soon after, not at the next poll).
SELECT least((SELECT min(run_after) FROM datesync.task WHERE state = 'queued'),
             (SELECT min(lease_expires_at) FROM datesync.task WHERE state = 'running' AND lease_owner <> $1))
       - now() AS wait;

-- name: day_mark_failed
-- Mark days whose task failed through lease expiry.
UPDATE datesync.day d
SET status = 'failed', error = r.error, updated_at = now()
FROM unnest($1::text[], $2::date[], $3::text[]) AS r(source, day, error)
WHERE d.source = r.source AND d.day = r.day AND d.status = 'running';

-- name: task_analyze
-- Statistics for a queue that just grew by a long batch; run in a transaction. ANALYZE takes no lock that
-- blocks the queue's reads or writes, but waits behind a running autovacuum of the table: not for long.
SET LOCAL lock_timeout = '2s';
ANALYZE datesync.task;

-- name: task_release_ready
-- The catch-up scan's release of waiting dates whose upstream dates have synced (datesync.task_release_ready):
-- one whose upstream settled while its batch was being expanded, or a ledger edited by hand.
SELECT datesync.task_release_ready(NULL, true);
