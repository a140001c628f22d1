-- The engine's mark on its own batch writes (see batch_guard_update).
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
