-- The engine's mark on its own batch writes (see batch_guard_update), and the wake-up every NOTIFY trigger uses.
--
-- The current definition of each function and trigger here: this file is re-applied (after the versioned
-- migrations, in file-name order, under the migration lock) whenever its checksum changes. Edit it in place;
-- versioned migrations (migrations/NNNN_*.sql) hold DDL and data changes only.

-- The engine's own functions mark their batch writes (a transaction-local setting they clear again), so the
-- guard below can tell them from an operator's hand edit. Custom settings need no privilege (Neon's roles are
-- not superusers); a function-level SET clause would.
CREATE OR REPLACE FUNCTION datesync.engine_on() RETURNS void LANGUAGE sql AS $$
    SELECT set_config('datesync.engine', 'on', true);
$$;

CREATE OR REPLACE FUNCTION datesync.engine_off() RETURNS void LANGUAGE sql AS $$
    SELECT set_config('datesync.engine', '', true);
$$;

-- The wake-up triggers of every table: NOTIFY on the channel the trigger names (TG_ARGV[0]), with the row's id
-- as payload for a row trigger and none for a statement trigger. PostgreSQL folds identical notifications per
-- transaction, and the payload is only a hint: listeners rescan the tables.
-- A transaction that NOTIFYs takes, at commit, a lock every NOTIFYing transaction of the server takes (PostgreSQL
-- queues notifications in commit order): it holds it through its commit's flush. The daemon's hot path
-- (task_finish with p_notify = false) therefore names its channel in datesync.notify_after_commit, and the daemon
-- sends one NOTIFY for many commits after them (daemon/sync/store.py, EventNudge).
CREATE OR REPLACE FUNCTION datesync.notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('datesync.notify_after_commit', true) = TG_ARGV[0] THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify(TG_ARGV[0], CASE WHEN TG_LEVEL = 'ROW' THEN NEW.id::text ELSE '' END);
    RETURN NULL;
END $$;
