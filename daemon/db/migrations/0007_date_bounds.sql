-- Dates the API refuses (before 1000-01-01, or infinite) are refused by the database from now on
-- (functions/15_date_bounds.sql, applied after this file). Rows that already hold one stay as they are, with one
-- exception: the tasks of such a date caught mid-flight, queued or running. A batch expanded before this
-- release had its first dates leased to a daemon that then died decoding them, again at every restart; they can
-- never run. They fail now, with the reason, and their batches end.
--
-- Queued to failed is no transition of the state machine (task_guard_update refuses it): this one-off move goes
-- around the guard, inside this transaction only. The bounds and words are date_refusal's, written out: the
-- function files are applied after the versioned migrations.
DO $$
DECLARE
    failed datesync.task[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM datesync.task WHERE state IN ('queued', 'running')
                   AND NOT (day BETWEEN date '1000-01-01' AND date '9999-12-31')) THEN
        RETURN;
    END IF;
    ALTER TABLE datesync.task DISABLE TRIGGER task_guard_update;
    WITH f AS (
        UPDATE datesync.task t
        SET state = 'failed', finished_at = now(), lease_owner = NULL, lease_expires_at = NULL,
            error = CASE WHEN t.day < date '1000-01-01' THEN 'day must not be before 1000-01-01'
                         ELSE 'day must be a date written YYYY-MM-DD, such as 2025-10-01' END
        WHERE t.state IN ('queued', 'running') AND NOT (t.day BETWEEN date '1000-01-01' AND date '9999-12-31')
        RETURNING t.*
    ), d AS (
        UPDATE datesync.day d SET status = 'failed', error = f.error, updated_at = now()
        FROM f WHERE d.source = f.source AND d.day = f.day AND d.status = 'running'
    )
    SELECT array_agg(f) INTO failed FROM f;
    ALTER TABLE datesync.task ENABLE TRIGGER task_guard_update;
    -- Events last (see event_serialize): one per task, then each ended batch's final one.
    PERFORM datesync.event_log_tasks(failed);
    PERFORM datesync.batch_end_settled(ARRAY(SELECT DISTINCT f.batch_id FROM unnest(failed) f));
END $$;
