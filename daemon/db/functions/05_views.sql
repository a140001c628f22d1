-- Views (the status API, the event stream and the page read them).
--
-- The current definition of each view here: this file is re-applied (after the versioned migrations, in file-name
-- order, under the migration lock) whenever its checksum changes. Edit it in place; versioned migrations
-- (migrations/NNNN_*.sql) hold DDL and data changes only. CREATE OR REPLACE VIEW may only add columns at the end:
-- to drop, rename or reorder one, a versioned migration drops the view first.

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
FROM datesync.batch b;
