-- datesync.event, the progress log that SSE replays: its commit order, its wake-up, its rows.
--
-- The current definition of each function and trigger here: this file is re-applied (after the versioned
-- migrations, in file-name order, under the migration lock) whenever its checksum changes. Edit it in place;
-- versioned migrations (migrations/NNNN_*.sql) hold DDL and data changes only.

-- Readers resume from "id > last seen". That is gapless only if ids become visible in order, so every
-- event-writing transaction takes this lock right before inserting events and holds it to commit; the
-- transactions that write events therefore commit in id order. Write events last in a transaction.
CREATE OR REPLACE FUNCTION datesync.event_serialize() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(7355608, 1);
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER event_serialize BEFORE INSERT ON datesync.event
    FOR EACH STATEMENT EXECUTE FUNCTION datesync.event_serialize();

-- One tiny NOTIFY per statement (and PostgreSQL folds identical ones per transaction); readers read rows.
CREATE OR REPLACE TRIGGER event_notify AFTER INSERT ON datesync.event
    FOR EACH STATEMENT EXECUTE FUNCTION datesync.notify('datesync_event');
DROP FUNCTION IF EXISTS datesync.event_notify();  -- before datesync.notify (migrations 0001..0008)

-- Log one event per task row, with its batch's live counts. Call it last in a transaction (see event_serialize).
CREATE OR REPLACE FUNCTION datesync.event_log_tasks(p_tasks datesync.task[]) RETURNS void LANGUAGE sql AS $$
    INSERT INTO datesync.event (batch_id, task_id, day, kind, state, attempt, error, data)
    SELECT t.batch_id, t.id, t.day, 'task', t.state::text, t.attempt, t.error,
           jsonb_build_object('counts', jsonb_build_object(
               'waiting', b.waiting, 'queued', b.queued, 'running', b.running, 'succeeded', b.succeeded,
               'failed', b.failed, 'skipped', b.skipped, 'cancelled', b.cancelled, 'days', b.days))
    FROM unnest(p_tasks) t JOIN datesync.batch b ON b.id = t.batch_id
    ORDER BY t.batch_id, t.day;
$$;
