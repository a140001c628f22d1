-- Batch counts without a hot row (issue 20): every transaction that moves a batch's tasks used to update the batch
-- row's counters, so daemons finishing dates of one batch waited for each other's commits on that row. Each such
-- transaction now inserts its changes here instead, readers add them to the batch row (datesync.batch_live,
-- datesync.batch_progress), and they are folded into the batch row now and then and when the batch ends
-- (datesync.batch_fold, functions/40_task.sql).
CREATE TABLE datesync.batch_count (
    -- No foreign key: its check would share-lock the batch row, the lock this table is here to avoid. Rows of a
    -- deleted batch go with it (trigger batch_count_delete).
    batch_id  bigint NOT NULL,
    -- Identity only: every 32nd row's transaction folds its batch (functions/40_task.sql, task_count).
    n         bigint GENERATED ALWAYS AS IDENTITY,
    waiting   integer NOT NULL DEFAULT 0,
    queued    integer NOT NULL DEFAULT 0,
    running   integer NOT NULL DEFAULT 0,
    succeeded integer NOT NULL DEFAULT 0,
    failed    integer NOT NULL DEFAULT 0,
    skipped   integer NOT NULL DEFAULT 0,
    cancelled integer NOT NULL DEFAULT 0
);
CREATE INDEX batch_count_batch ON datesync.batch_count (batch_id);

-- Readers find the event horizon from the last id handed out (30_event.sql, event_horizon): ids must not be cached
-- per session, or a session could hand out an id below a horizon already passed.
ALTER TABLE datesync.event ALTER COLUMN id SET CACHE 1;
