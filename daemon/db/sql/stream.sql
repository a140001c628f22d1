-- Reads behind the event streams (web/events) and the CLI's follower (datesync/follow.py).
-- Each event is rendered to its JSON text here, once, so that the web process only frames and forwards it.
-- Readers resume with "id > last AND id <= horizon", the horizon read by its own statement just before
-- (datesync.event_horizon, 30_event.sql): no event at or below it can still commit, so the reads are gapless.

-- name: event_horizon
-- The id up to which the log is final: where a new reader starts, and how far the next read may go.
SELECT datesync.event_horizon();

-- name: event_list_after
-- The next page of events after id $1 up to the horizon $2, every batch, oldest first, rendered for the stream.
SELECT id, batch_id, kind, (kind = 'batch' AND data -> 'final' = 'true'::jsonb) AS final,
       jsonb_build_object('id', id, 'at', at, 'batch_id', batch_id, 'task_id', task_id, 'day', day,
                          'kind', kind, 'state', state, 'attempt', attempt, 'error', error,
                          'data', data)::text AS payload
FROM datesync.event
WHERE id > $1 AND id <= $2
ORDER BY id
LIMIT $3;

-- name: event_list_batch_after
-- The next page of one batch's events after id $2 up to the horizon $3 (index event_batch), oldest first, rendered
-- for the stream.
SELECT id, batch_id, kind, (kind = 'batch' AND data -> 'final' = 'true'::jsonb) AS final,
       jsonb_build_object('id', id, 'at', at, 'batch_id', batch_id, 'task_id', task_id, 'day', day,
                          'kind', kind, 'state', state, 'attempt', attempt, 'error', error,
                          'data', data)::text AS payload
FROM datesync.event
WHERE batch_id = $1 AND id > $2 AND id <= $3
ORDER BY id
LIMIT $4;

-- name: event_snapshot_batch
-- A batch stream's snapshot, read after the horizon $2: the Batch object, the id to replay from (the horizon: the
-- snapshot may already show events above it, which the replay then repeats, harmlessly) and end_from, the id from
-- which a final batch event ends the stream: the batch's latest final event if it has ended, else anything newer
-- than both the horizon and the final events this snapshot sees (so that a final event from before a retry, met
-- while replaying, does not end it; a later final event gets a later id).
SELECT ((to_jsonb(p) - 'batch_id') || jsonb_build_object('id', p.batch_id))::text AS batch,
       p.state::text AS state,
       $2::bigint AS max_id,
       CASE WHEN p.state IN ('succeeded', 'failed', 'cancelled') AND f.final_id IS NOT NULL THEN f.final_id
            ELSE greatest($2::bigint, coalesce(f.final_id, 0)) + 1 END AS end_from,
       p.state IN ('succeeded', 'failed', 'cancelled') AS ended
FROM datesync.batch_progress p
LEFT JOIN LATERAL (
    SELECT max(e.id) AS final_id FROM datesync.event e
    WHERE e.batch_id = p.batch_id AND e.kind = 'batch' AND e.data -> 'final' = 'true'::jsonb
) f ON true
WHERE p.batch_id = $1;

-- name: event_snapshot_cards
-- The all-batches stream's snapshot, read after the horizon $1: the status cards and the id to replay from.
-- queued counts dates waiting in tasks plus those of batches not yet expanded into tasks. pruned_through: events up
-- to this id may have been deleted by retention, so a replay from below it would have a gap.
SELECT jsonb_build_object(
           'synced', (SELECT count(*) FROM datesync.day WHERE status = 'success'),
           'failed', (SELECT count(*) FROM datesync.day WHERE status = 'failed'),
           'running', (SELECT count(*) FROM datesync.task WHERE state = 'running'),
           'queued', (SELECT count(*) FROM datesync.task WHERE state = 'queued')
                     + (SELECT coalesce(sum(days), 0) FROM datesync.batch
                        WHERE state = 'queued' AND NOT cancel_requested),
           'last_success_at', (SELECT max(synced_at) FROM datesync.day WHERE status = 'success'),
           'waiting', (SELECT count(*) FROM datesync.task WHERE state = 'waiting'),
           'stale', (SELECT count(*) FROM datesync.day WHERE status = 'success' AND stale_since IS NOT NULL))::text
           AS cards,
       $1::bigint AS max_id,
       (SELECT events_pruned_through FROM datesync.retention) AS pruned_through;
