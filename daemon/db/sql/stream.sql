-- Reads behind the event streams (web/events) and the CLI's follower (datesync/follow.py).
-- Each event is rendered to its JSON text here, once, so that the web process only frames and forwards it.
-- Readers resume with "id > last": gapless because event ids become visible in commit order
-- (datesync.event_serialize).

-- name: event_max_id
-- The newest committed event id (0 when the log is empty): where a new reader starts.
SELECT coalesce(max(id), 0) FROM datesync.event;

-- name: event_list_after
-- The next page of events after id $1, every batch, oldest first, rendered for the stream.
SELECT id, batch_id, kind, (kind = 'batch' AND data -> 'final' = 'true'::jsonb) AS final,
       jsonb_build_object('id', id, 'at', at, 'batch_id', batch_id, 'task_id', task_id, 'day', day,
                          'kind', kind, 'state', state, 'attempt', attempt, 'error', error,
                          'data', data)::text AS payload
FROM datesync.event
WHERE id > $1
ORDER BY id
LIMIT $2;

-- name: event_list_batch_after
-- The next page of one batch's events after id $2 (index event_batch), oldest first, rendered for the stream.
SELECT id, batch_id, kind, (kind = 'batch' AND data -> 'final' = 'true'::jsonb) AS final,
       jsonb_build_object('id', id, 'at', at, 'batch_id', batch_id, 'task_id', task_id, 'day', day,
                          'kind', kind, 'state', state, 'attempt', attempt, 'error', error,
                          'data', data)::text AS payload
FROM datesync.event
WHERE batch_id = $1 AND id > $2
ORDER BY id
LIMIT $3;

-- name: event_snapshot_batch
-- A batch stream's snapshot, all from one statement's snapshot: the Batch object, the newest event id at that
-- moment (live events continue after it) and end_from, the id from which a final batch event ends the stream:
-- the batch's latest final event if it has ended, else anything newer than this snapshot (so that a final
-- event from before a retry, met while replaying, does not end it).
SELECT ((to_jsonb(p) - 'batch_id') || jsonb_build_object('id', p.batch_id))::text AS batch,
       p.state::text AS state,
       m.max_id,
       CASE WHEN p.state IN ('succeeded', 'failed', 'cancelled')
            THEN coalesce(f.final_id, m.max_id + 1)
            ELSE m.max_id + 1 END AS end_from,
       p.state IN ('succeeded', 'failed', 'cancelled') AS ended
FROM datesync.batch_progress p
CROSS JOIN (SELECT coalesce(max(id), 0) AS max_id FROM datesync.event) m
LEFT JOIN LATERAL (
    SELECT max(e.id) AS final_id FROM datesync.event e
    WHERE e.batch_id = p.batch_id AND e.kind = 'batch' AND e.data -> 'final' = 'true'::jsonb
) f ON true
WHERE p.batch_id = $1;

-- name: event_snapshot_cards
-- The all-batches stream's snapshot: the status cards and the newest event id, from one statement's snapshot.
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
       (SELECT coalesce(max(id), 0) FROM datesync.event) AS max_id,
       (SELECT events_pruned_through FROM datesync.retention) AS pruned_through;
