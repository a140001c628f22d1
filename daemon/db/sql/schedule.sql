-- The daily schedule: exactly one set of batches per (source, scheduled day), however many daemons run.

-- name: schedule_run_claim
-- Record the slot of ($1 source, $2 day); no row back when another daemon or an earlier start already did.
INSERT INTO datesync.schedule_run (source, day, due_at, lookback, worker)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (source, day) DO NOTHING
RETURNING source, day;

-- name: schedule_batch_insert
-- The slot's batches for source $1, one per range (starts $2, ends $3); last in its transaction (events).
INSERT INTO datesync.batch (source, start_date, end_date, requested_by)
SELECT $1, r.start_date, r.end_date, 'schedule'
FROM unnest($2::date[], $3::date[]) AS r(start_date, end_date)
ORDER BY r.start_date
RETURNING id, start_date, end_date;
