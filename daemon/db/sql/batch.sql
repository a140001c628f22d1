-- Batches: creation, expansion into tasks, cancel, retry and their final state.

-- name: batch_insert
-- A new batch; the trigger validates it, logs its "queued" event and wakes the daemons.
INSERT INTO datesync.batch (source, start_date, end_date, force, idempotency_key, requested_by)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING id, source, start_date, end_date, force, state, days, created_at;

-- name: batch_expand
-- Move the oldest queued batch to running, with one task per date and its "running" event, in one statement
-- (datesync.batch_expand); no row when there is none, or when the oldest one was refused (see batch_expand_claim).
SELECT * FROM datesync.batch_expand($1);

-- name: batch_expand_claim
-- The same, and claim up to $3 dates of sources $5 for daemon $2 (lease $4 s) in the same transaction
-- (datesync.batch_expand_claim): the claimed rows as task_finish returns them, then the 'expanded' row; or only
-- a 'refused' row (with its error) when the oldest batch holds a date the database refuses, which it failed.
SELECT * FROM datesync.batch_expand_claim($1, $2, $3, $4, $5::text[], false);  -- events NOTIFYed as task_claim's

-- name: batch_cancel_requested
-- Unfinished batches whose cancel was requested (from the API or psql).
SELECT id, state FROM datesync.batch
WHERE cancel_requested AND state IN ('queued', 'running');

-- name: batch_cancel_unexpanded
-- Cancel a batch that was never expanded (datesync.batch_cancel_unexpanded).
SELECT * FROM datesync.batch_cancel_unexpanded($1) AS id;

-- name: batch_request_cancel
-- Ask for a batch to be cancelled; the daemons do the rest. Returns nothing once the batch has ended.
UPDATE datesync.batch SET cancel_requested = true
WHERE id = $1 AND state IN ('queued', 'running')
RETURNING id, state;

-- name: batch_end_settled
-- End the given running batches that have nothing queued or running, logging their final event.
SELECT * FROM datesync.batch_end_settled($1::bigint[]);

-- name: batch_running_ids
-- Running batches, for the catch-up scan that finalizes any a crashed daemon left behind.
SELECT id FROM datesync.batch WHERE state = 'running';

-- name: batch_requeue_failed
-- Requeue a finished batch's failed (and, for a cancelled batch, cancelled) dates (datesync.batch_requeue_failed);
-- no row when there is nothing to retry.
SELECT * FROM datesync.batch_requeue_failed($1);

-- name: batch_get
-- One batch with live counts.
SELECT * FROM datesync.batch_progress WHERE batch_id = $1;
