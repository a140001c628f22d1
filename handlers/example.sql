-- example.sql: a daily roll-up for the `sql` handler (DATESYNC_HANDLER=sql,
-- DATESYNC_SQL_FILE=/app/handlers/example.sql). $1 is the date; the statements run in one transaction and the
-- rows they affect are the date's rows synced. This one counts how often each date ran, in a summary table.
CREATE TABLE IF NOT EXISTS datesync_example_daily (day date PRIMARY KEY, runs integer NOT NULL);
INSERT INTO datesync_example_daily (day, runs) VALUES ($1::date, 1)
ON CONFLICT (day) DO UPDATE SET runs = datesync_example_daily.runs + 1;
