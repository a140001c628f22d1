-- Retention (daemon/retention.py) and storage figures (/metrics, datesync bench).

-- name: batch_prune_step
-- Delete up to $2 task rows and $2 event rows of one batch finished before $1, in this one transaction
-- (datesync.batch_prune_step, 0008_retention); no row when no batch is due or every due one is being pruned.
SELECT batch_id, tasks, events, pruned FROM datesync.batch_prune_step($1, $2);

-- name: retention_horizon_get
-- Every event id up to this one may have been deleted by retention (0: none ever was).
SELECT events_pruned_through FROM datesync.retention;

-- name: table_size_list
-- Bytes on disk of each datesync table with its indexes and TOAST (a stat of its files, no scan).
SELECT c.relname AS name, pg_total_relation_size(c.oid) AS bytes
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'datesync' AND c.relkind IN ('r', 'p')
ORDER BY c.relname;
