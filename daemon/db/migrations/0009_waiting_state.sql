-- Sources that depend on each other: a date of a downstream source (DATESYNC_<NAME>_AFTER) waits, in the task
-- state `waiting`, until the dates it is built on have synced. Alone in its file: a new enum value cannot be used
-- in the transaction that adds it, and 0010 uses it.
ALTER TYPE datesync.task_state ADD VALUE IF NOT EXISTS 'waiting' BEFORE 'queued';
