-- datesync.event, the progress log that SSE replays: its horizon (how far readers may read), its wake-up, its rows.
--
-- The current definition of each function and trigger here: this file is re-applied (after the versioned
-- migrations, in file-name order, under the migration lock) whenever its checksum changes. Edit it in place;
-- versioned migrations (migrations/NNNN_*.sql) hold DDL and data changes only.

-- Readers resume from "id > last seen", which is gapless only if no id at or below the last seen can still
-- commit. Every event-writing transaction takes this lock, shared, before its first event and holds it to commit
-- (writers do not wait for each other: issue 20); a reader asks datesync.event_horizon() how far it may read.
CREATE OR REPLACE FUNCTION datesync.event_serialize() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(7355608, 1);
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER event_serialize BEFORE INSERT ON datesync.event
    FOR EACH STATEMENT EXECUTE FUNCTION datesync.event_serialize();

-- The highest event id a reader may read up to: once this holds the lock exclusively, every writer that held it
-- has ended, and every id handed out so far (the sequence hands ids out one at a time, under that lock) belongs to
-- a transaction that committed, visibly to any statement started afterwards, or rolled back. Call it as a
-- statement of its own, outside a transaction (the lock is held until the transaction ends), then read
-- "id > last AND id <= horizon" in the next statement. It waits for the writers in flight (a commit's time), and
-- writers that arrive meanwhile wait behind it, so readers call it once per read, not per row. A writer held open
-- (an operator's transaction that inserted a batch) makes it give up after a second, with an error (the reader
-- tries again later): writers queued behind it wait that second, never for the open transaction.
CREATE OR REPLACE FUNCTION datesync.event_horizon() RETURNS bigint LANGUAGE plpgsql
SET lock_timeout = '1s'
AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(7355608, 1);
    RETURN (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM datesync.event_id_seq);
END $$;

-- One tiny NOTIFY per statement (and PostgreSQL folds identical ones per transaction); readers read rows.
CREATE OR REPLACE TRIGGER event_notify AFTER INSERT ON datesync.event
    FOR EACH STATEMENT EXECUTE FUNCTION datesync.notify('datesync_event');
DROP FUNCTION IF EXISTS datesync.event_notify();  -- before datesync.notify (migrations 0001..0008)

-- Log one event per task row, with its batch's live counts as this transaction sees them. Call it last in a
-- transaction (see event_serialize).
CREATE OR REPLACE FUNCTION datesync.event_log_tasks(p_tasks datesync.task[]) RETURNS void LANGUAGE sql AS $$
    INSERT INTO datesync.event (batch_id, task_id, day, kind, state, attempt, error, data)
    SELECT t.batch_id, t.id, t.day, 'task', t.state::text, t.attempt, t.error,
           jsonb_build_object('counts', jsonb_build_object(
               'waiting', b.waiting, 'queued', b.queued, 'running', b.running, 'succeeded', b.succeeded,
               'failed', b.failed, 'skipped', b.skipped, 'cancelled', b.cancelled, 'days', b.days))
    FROM unnest(p_tasks) t JOIN datesync.batch_live b ON b.id = t.batch_id
    ORDER BY t.batch_id, t.day;
$$;
