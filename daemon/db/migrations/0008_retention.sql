-- Retention (DATESYNC_RETENTION): a batch finished longer ago than the retention loses its task rows and its
-- event rows but one, in small transactions beside the engine (daemon/retention.py). What stays: the batch row with
-- its final counts, its latest final event (so that its event stream still ends with that event, and a client that
-- saw it still gets 204), every day row (the ledger: what is synced, and why a date failed), and the
-- Idempotency-Keys that named it (a retried request keeps answering with the same, now pruned, batch).
-- This file holds the tables; the functions (datesync.batch_prune_step, and task_count_delete, which leaves a
-- pruned batch's counts alone) are in functions/60_retention.sql and functions/40_task.sql; batch_progress shows
-- pruned_at through functions/05_views.sql.

-- When retention removed the batch's tasks and events; NULL while they are kept. Never set by the API.
ALTER TABLE datesync.batch ADD COLUMN pruned_at timestamptz;
-- The pruner's look-up: finished batches not pruned yet, oldest first. Pruned ones leave the index, so it stays
-- as small as the retention window.
CREATE INDEX batch_prunable ON datesync.batch (finished_at) WHERE finished_at IS NOT NULL AND pruned_at IS NULL;

-- One row: every event id up to events_pruned_through may have been deleted. A reader resuming from an id below it
-- cannot replay without a gap (web/events: it gets a fresh snapshot instead).
CREATE TABLE datesync.retention (
    singleton             boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    events_pruned_through bigint NOT NULL DEFAULT 0,
    updated_at            timestamptz NOT NULL DEFAULT now()
);
INSERT INTO datesync.retention DEFAULT VALUES;
