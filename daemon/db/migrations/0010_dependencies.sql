-- Sources that depend on each other (docs/state_machine.md, "Waiting for upstream dates"). The functions that use
-- these tables are in functions/45_dependency.sql; task_finish and batch_expand_claim call them.

-- DATESYNC_<NAME>_AFTER, as the daemon registered it at start: a date d of `source` may run once the dates
-- d + lo .. d + hi of `upstream` have synced (lo = hi = 0: the same date; -6..0: the seven days ending on d).
CREATE TABLE datesync.dependency (
    source     text NOT NULL REFERENCES datesync.source (name) ON DELETE CASCADE,
    upstream   text NOT NULL REFERENCES datesync.source (name) ON DELETE CASCADE,
    lo         integer NOT NULL DEFAULT 0,
    hi         integer NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, upstream),
    CONSTRAINT dependency_not_itself CHECK (source <> upstream),
    CONSTRAINT dependency_window CHECK (lo <= hi AND lo >= -100000 AND hi <= 100000)
);
-- Release and failure look up dependents by upstream.
CREATE INDEX dependency_upstream ON datesync.dependency (upstream);

-- A batch's waiting dates, counted like the other states; and the batches it must not be expanded before (the
-- upstream batch of a cascade or of with_upstream): expanded after them, its dates see their dates as still to run
-- and wait for them, instead of running on the dates' old data.
ALTER TABLE datesync.batch
    ADD COLUMN waiting integer NOT NULL DEFAULT 0,
    ADD COLUMN after_batches bigint[] NOT NULL DEFAULT '{}';

-- Waiting dates hold no lease and have not finished (the CHECKs of 0001 already say so for every state but
-- running and the final ones); they are found by date when an upstream date settles, and by batch to cancel. The
-- date index holds queued dates too: whether an upstream date that failed is still to run again (a retry).
CREATE INDEX task_pending_day ON datesync.task (source, day) WHERE state IN ('waiting', 'queued');
CREATE INDEX task_batch_waiting ON datesync.task (batch_id) WHERE state = 'waiting';

-- When a re-sync of an upstream date made this (successful) date stale; NULL while it is fresh. Its next success
-- clears it.
ALTER TABLE datesync.day ADD COLUMN stale_since timestamptz;
CREATE INDEX day_stale ON datesync.day (source, day) WHERE stale_since IS NOT NULL;

-- Events of a day that are not a task's: `stale`.
ALTER TABLE datesync.event DROP CONSTRAINT event_kind_check;
ALTER TABLE datesync.event ADD CONSTRAINT event_kind_check CHECK (kind IN ('batch', 'task', 'day'));
