-- Views (the status API, the event stream and the page read them).
--
-- The current definition of each view here: this file is re-applied (after the versioned migrations, in file-name
-- order, under the migration lock) whenever its checksum changes. Edit it in place; versioned migrations
-- (migrations/NNNN_*.sql) hold DDL and data changes only. CREATE OR REPLACE VIEW may only add columns at the end:
-- to drop, rename or reorder one, a versioned migration drops the view first.

-- A batch with its live counts: the batch row's own counts plus the changes that transactions made since its last
-- fold (datesync.batch_count, migrations/0011_batch_count.sql). Every reader of a batch's counts reads them here;
-- the batch row alone is exact once the batch has ended (its end folds them).
CREATE OR REPLACE VIEW datesync.batch_live AS
SELECT b.id, b.source, b.start_date, b.end_date, b.force, b.state, b.cancel_requested, b.days,
       b.waiting + c.waiting AS waiting,
       b.queued + c.queued AS queued,
       b.running + c.running AS running,
       b.succeeded + c.succeeded AS succeeded,
       b.failed + c.failed AS failed,
       b.skipped + c.skipped AS skipped,
       b.cancelled + c.cancelled AS cancelled,
       b.created_at, b.started_at, b.finished_at, b.pruned_at, b.after_batches
FROM datesync.batch b
CROSS JOIN LATERAL (
    SELECT coalesce(sum(x.waiting), 0)::integer AS waiting, coalesce(sum(x.queued), 0)::integer AS queued,
           coalesce(sum(x.running), 0)::integer AS running, coalesce(sum(x.succeeded), 0)::integer AS succeeded,
           coalesce(sum(x.failed), 0)::integer AS failed, coalesce(sum(x.skipped), 0)::integer AS skipped,
           coalesce(sum(x.cancelled), 0)::integer AS cancelled
    FROM datesync.batch_count x WHERE x.batch_id = b.id
) c;

-- Live counts for every batch (a batch not yet expanded counts all its days as queued); pruned_at is set once
-- retention removed the batch's tasks and events (migrations/0008_retention.sql).
CREATE OR REPLACE VIEW datesync.batch_progress AS
SELECT b.id AS batch_id,
       b.source,
       b.start_date,
       b.end_date,
       b.force,
       b.state,
       b.cancel_requested,
       b.days,
       CASE WHEN b.state = 'queued' THEN b.days ELSE b.queued END AS queued,
       b.running,
       b.succeeded,
       b.failed,
       b.skipped,
       b.cancelled,
       b.succeeded + b.failed + b.skipped + b.cancelled AS done,
       b.created_at,
       b.started_at,
       b.finished_at,
       b.pruned_at,
       b.waiting
FROM datesync.batch_live b;
