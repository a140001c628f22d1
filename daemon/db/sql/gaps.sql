-- Gaps: the dates of a range that are not synced, for the API, the CLI and the schedule's look-back.

-- name: day_gaps
-- Dates $2..$3 of source $1 that are missing, failed, or stale (synced, but an upstream date they are built on was
-- re-synced since), each with its contiguous range of gaps.
WITH gap AS (
    SELECT g.day::date AS day,
           CASE WHEN d.status IS NULL THEN 'missing' WHEN d.status = 'failed' THEN 'failed' ELSE 'stale' END AS status
    FROM generate_series($2::date, $3::date, interval '1 day') AS g(day)
    LEFT JOIN datesync.day d ON d.source = $1 AND d.day = g.day::date
    WHERE d.status IS NULL OR d.status = 'failed' OR (d.status = 'success' AND d.stale_since IS NOT NULL)
), island AS (
    -- Consecutive dates share day - row_number(): the classic gaps-and-islands grouping.
    SELECT day, status, day - (row_number() OVER (ORDER BY day))::integer AS grp FROM gap
)
SELECT day, status, min(day) OVER w AS range_start, max(day) OVER w AS range_end
FROM island
WINDOW w AS (PARTITION BY grp)
ORDER BY day;
