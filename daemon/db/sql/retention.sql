-- Retention (daemon/retention.py) and storage figures (/metrics, datesync bench).

-- name: batch_prune_step
-- Delete up to $2 task rows and $2 event rows of one batch finished more than $1 days ago, in this one transaction
-- (datesync.batch_prune_step, functions/60_retention.sql); no row when no batch is due or every due one is being
-- pruned. "Ago" by the database's clock, as leases are: a daemon whose clock runs days ahead prunes nothing early.
SELECT batch_id, tasks, events, pruned FROM datesync.batch_prune_step(now() - make_interval(days => $1::int), $2);

-- name: retention_horizon_get
-- Every event id up to this one may have been deleted by retention (0: none ever was).
SELECT events_pruned_through FROM datesync.retention;

-- name: table_size_list
-- Bytes on disk of each datesync table with its indexes and TOAST (a stat of its files, no scan).
SELECT c.relname AS name, pg_total_relation_size(c.oid) AS bytes
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'datesync' AND c.relkind IN ('r', 'p')
ORDER BY c.relname;

-- name: table_data_bytes_list
-- Bytes of the given datesync tables' data: each one's main fork, its indexes' and its TOAST table's with that
-- table's index (free-space and visibility maps left out: a few fixed pages per table, not data).
SELECT t.relname AS name, sum(pg_relation_size(r.oid))::bigint AS bytes
FROM pg_class t
JOIN pg_namespace n ON n.oid = t.relnamespace
CROSS JOIN LATERAL (
    SELECT t.oid
    UNION ALL SELECT i.indexrelid FROM pg_index i WHERE i.indrelid = t.oid
    UNION ALL SELECT t.reltoastrelid WHERE t.reltoastrelid <> 0
    UNION ALL SELECT i.indexrelid FROM pg_index i WHERE t.reltoastrelid <> 0 AND i.indrelid = t.reltoastrelid
) r(oid)
WHERE n.nspname = 'datesync' AND t.relname = ANY($1::text[])
GROUP BY t.relname;
