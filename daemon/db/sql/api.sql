-- Queries of the HTTP API (web/api): reading status rows, and the checks around inserting a batch.

-- name: batch_request
-- Return the batch an Idempotency-Key made, or an identical unfinished one, else insert one (0002_batch_request).
-- Run it on its own, never inside a transaction: it must commit right after its INSERT.
SELECT batch_id, days, outcome FROM datesync.batch_request($1, $2, $3, $4, $5, $6);

-- name: batch_request_linked
-- The same with the batches of its upstream sources ($7, with_upstream) and downstream ones ($8, cascade), each
-- expanded after those before it, in one transaction; ranges cut at today.
SELECT * FROM datesync.batch_request_linked($1, $2, $3, $4, $5, $6, $7, $8);

-- name: batch_waiting_preview
-- How many dates of source $1 in $2..$3 would wait for upstream dates not synced yet, and for which sources.
SELECT * FROM datesync.batch_waiting_preview($1, $2, $3);

-- name: batch_find_by_key
-- The batch an Idempotency-Key was first used for.
SELECT id FROM datesync.batch WHERE idempotency_key = $1;

-- name: batch_wake_daemons
-- Wake the daemons about a batch (delivered at commit), as the insert and cancel triggers do.
SELECT pg_notify('datesync_batch', $1::text);

-- name: batch_list_newest
-- One page of batches with live counts, newest first, optionally of one state.
SELECT * FROM datesync.batch_progress
WHERE $1::text IS NULL OR state::text = $1
ORDER BY batch_id DESC
LIMIT $2 OFFSET $3;

-- name: batch_count_by_state
-- How many batches batch_list_newest pages through.
SELECT count(*) FROM datesync.batch WHERE $1::text IS NULL OR state::text = $1;

-- name: task_list_for_batch
-- The per-date tasks of one batch, in date order.
SELECT t.id, t.day, t.state::text AS state, t.attempt, t.max_attempts, t.error, t.rows_synced, t.run_after,
       t.started_at, t.finished_at, (extract(epoch FROM t.finished_at - t.started_at) * 1000)::bigint AS duration_ms,
       CASE WHEN t.state = 'waiting' THEN datesync.waiting_for(t.source, t.day, b.after_batches) END AS waiting_for
FROM datesync.task t JOIN datesync.batch b ON b.id = t.batch_id
WHERE t.batch_id = $1
ORDER BY t.day;

-- name: source_known
-- Whether a source is configured.
SELECT EXISTS (SELECT 1 FROM datesync.source WHERE name = $1);

-- name: day_plan_for_range
-- Each date of a range with its current status (NULL: never synced), for a dry run.
SELECT g.day::date AS day, d.status::text AS status
FROM generate_series($2::date, $3::date, interval '1 day') AS g(day)
LEFT JOIN datesync.day d ON d.source = $1 AND d.day = g.day::date
ORDER BY g.day;

-- name: day_list_filtered
-- One page of per-date records, newest date first; every filter is optional ($1 source, $2 from, $3 to,
-- $4 status).
SELECT source, day, status::text AS status, attempts, rows_synced, error, batch_id, synced_at, updated_at,
       stale_since
FROM datesync.day
WHERE ($1::text IS NULL OR source = $1) AND ($2::date IS NULL OR day >= $2) AND ($3::date IS NULL OR day <= $3)
  AND ($4::text IS NULL OR status::text = $4)
ORDER BY day DESC, source
LIMIT $5 OFFSET $6;

-- name: day_count_filtered
-- How many records day_list_filtered pages through.
SELECT count(*)
FROM datesync.day
WHERE ($1::text IS NULL OR source = $1) AND ($2::date IS NULL OR day >= $2) AND ($3::date IS NULL OR day <= $3)
  AND ($4::text IS NULL OR status::text = $4);

-- name: status_cards_get
-- The status page's cards, optionally for one source: dates synced and failed (datesync.day), dates running,
-- dates queued (queued tasks plus the dates of batches not expanded yet), and the last success.
WITH days AS (
    SELECT count(*) FILTER (WHERE status = 'success') AS synced,
           count(*) FILTER (WHERE status = 'failed') AS failed,
           count(*) FILTER (WHERE status = 'success' AND stale_since IS NOT NULL) AS stale,
           max(synced_at) FILTER (WHERE status = 'success') AS last_success_at
    FROM datesync.day WHERE $1::text IS NULL OR source = $1
), tasks AS (
    SELECT count(*) FILTER (WHERE state = 'running') AS running,
           count(*) FILTER (WHERE state = 'queued') AS queued,
           count(*) FILTER (WHERE state = 'waiting') AS waiting
    FROM datesync.task WHERE state IN ('waiting', 'queued', 'running') AND ($1::text IS NULL OR source = $1)
), unexpanded AS (
    SELECT coalesce(sum(days), 0)::bigint AS days
    FROM datesync.batch
    WHERE state = 'queued' AND NOT cancel_requested AND ($1::text IS NULL OR source = $1)
)
SELECT days.synced, days.failed, tasks.running, tasks.queued + unexpanded.days AS queued, days.last_success_at,
       tasks.waiting, days.stale
FROM days, tasks, unexpanded;

-- name: batch_count_unfinished
-- The queue for /metrics: unfinished batches and their queued and running dates, by state. One round trip,
-- proportional to the unfinished batches, not their dates (batch_progress: the batch rows' counts plus the changes
-- not folded into them yet; a batch not yet expanded counts as all queued); the WHERE clause matches the partial index batch_unfinished.
SELECT state::text AS state, count(*) AS batches, coalesce(sum(queued), 0) AS queued,
       coalesce(sum(running), 0) AS running
FROM datesync.batch_progress
WHERE state IN ('queued', 'running')
GROUP BY state;
