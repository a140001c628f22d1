-- PLACEHOLDER, NOT TO BE RELEASED: version 7 is taken by another change in progress, and the migrator refuses a gap
-- before 0008_retention.sql. Merge the real 0007 first and delete this file in the same merge; a database that
-- applied this placeholder would refuse the real 0007 (a different checksum for an applied version).
SELECT 1;
