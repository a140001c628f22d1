-- datesync.day, the ledger of each (source, date).
--
-- The current definition of each function and trigger here: this file is re-applied (after the versioned
-- migrations, in file-name order, under the migration lock) whenever its checksum changes. Edit it in place;
-- versioned migrations (migrations/NNNN_*.sql) hold DDL and data changes only.

-- Put days back as they were before a run that did not finish (cancelled, handed back, lease taken back): the
-- prior status, or no row at all for a day never synced before. Only days still marked running are touched.
CREATE OR REPLACE FUNCTION datesync.day_restore(p_sources text[], p_days date[]) RETURNS void LANGUAGE sql AS $$
    DELETE FROM datesync.day d USING unnest(p_sources, p_days) AS r(source, day)
    WHERE d.source = r.source AND d.day = r.day AND d.status = 'running' AND d.prior_status IS NULL;
    UPDATE datesync.day d SET status = d.prior_status, prior_status = NULL, updated_at = now()
    FROM unnest(p_sources, p_days) AS r(source, day)
    WHERE d.source = r.source AND d.day = r.day AND d.status = 'running';
$$;
