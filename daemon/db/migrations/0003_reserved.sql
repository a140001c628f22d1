-- Version 3 was never released (its work went into 0004); this file keeps the numbers without gaps, which the
-- migrator checks. It changes nothing.
SELECT 1;
