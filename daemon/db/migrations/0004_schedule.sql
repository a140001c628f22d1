-- The daily schedule's memory: one row per (source, day) the schedule has requested. Its primary key is what
-- makes "exactly once" hold with several daemons and across restarts: each daemon inserts the row with
-- ON CONFLICT DO NOTHING in the same transaction as the batches, so only the first one creates them.
CREATE TABLE datesync.schedule_run (
    source     text NOT NULL REFERENCES datesync.source (name),
    day        date NOT NULL,            -- the date the slot syncs ("yesterday" at the slot)
    due_at     timestamptz NOT NULL,     -- the slot: DATESYNC_SCHEDULE on the day after `day`, in DATESYNC_TIMEZONE
    lookback   integer NOT NULL DEFAULT 0 CHECK (lookback >= 0),
    worker     text NOT NULL,            -- the daemon that created the batches
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, day)
);
