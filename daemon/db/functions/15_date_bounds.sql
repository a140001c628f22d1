-- The dates the API refuses, refused by the database too, in the API's words: before 1000-01-01 (BC, years 1 to
-- 999) and infinite ones. A psql INSERT of a BC batch used to be accepted, and the daemon died decoding its dates
-- (Python's dates start at year 1), again at every restart. Only new and changed rows are checked: rows from
-- before stay as they are (a CHECK constraint, even NOT VALID, would refuse every later UPDATE of such a row,
-- such as the one that fails it). batch_validate (50_batch.sql) checks a batch's dates; batch_expand_claim
-- fails a batch holding one instead of expanding it; 0007_date_bounds.sql failed the tasks caught mid-flight.
--
-- The current definition of each function and trigger here: this file is re-applied (after the versioned
-- migrations, in file-name order, under the migration lock) whenever its checksum changes. Edit it in place;
-- versioned migrations (migrations/NNNN_*.sql) hold DDL and data changes only.

-- Why a date cannot be a day to sync, in daemon/ops/messages.py's English (date_too_early, date_format); NULL
-- when it can. -infinity is before 1000-01-01 too (and it is what asyncpg sends for Python's first date,
-- 0001-01-01); infinity, like anything past year 9999, is no date written YYYY-MM-DD (nor one Python can hold).
CREATE OR REPLACE FUNCTION datesync.date_refusal(p_field text, p_value date) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN p_value < date '1000-01-01' THEN p_field || ' must not be before 1000-01-01'
        WHEN p_value > date '9999-12-31' THEN p_field || ' must be a date written YYYY-MM-DD, such as 2025-10-01'
    END;
$$;

-- Hand edits of task and day rows (an INSERT, a changed day) get the same check, naming `day`. A task of such a
-- date from before may stay in a final state, but never become runnable again (and a retry leaves it out).
CREATE OR REPLACE FUNCTION datesync.day_validate() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    refused text := datesync.date_refusal('day', NEW.day);
BEGIN
    IF refused IS NOT NULL THEN
        RAISE EXCEPTION '%', refused USING ERRCODE = 'check_violation', DETAIL = 'day';
    END IF;
    RETURN NULL;
END $$;
-- The WHEN clauses repeat date_refusal's bounds as plain comparisons: they are evaluated for every row the hot
-- path writes, and the function runs only for a date outside them. AFTER, not BEFORE: a BEFORE UPDATE row
-- trigger makes every update of a row lock it first, and day rows are updated at every claim and finish.
CREATE OR REPLACE TRIGGER task_day_insert AFTER INSERT ON datesync.task FOR EACH ROW
    WHEN (NOT (NEW.day BETWEEN date '1000-01-01' AND date '9999-12-31'))
    EXECUTE FUNCTION datesync.day_validate();
CREATE OR REPLACE TRIGGER task_day_update AFTER UPDATE OF day, state ON datesync.task FOR EACH ROW
    WHEN (NOT (NEW.day BETWEEN date '1000-01-01' AND date '9999-12-31')
          AND (NEW.day IS DISTINCT FROM OLD.day OR NEW.state IN ('queued', 'running')))
    EXECUTE FUNCTION datesync.day_validate();
CREATE OR REPLACE TRIGGER day_day_check AFTER INSERT OR UPDATE OF day ON datesync.day FOR EACH ROW
    WHEN (NOT (NEW.day BETWEEN date '1000-01-01' AND date '9999-12-31'))
    EXECUTE FUNCTION datesync.day_validate();
