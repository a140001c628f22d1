-- A batch request from the API as one statement: dedupe, Idempotency-Key and insert, race-free.
--
-- Called on its own (no explicit transaction), the implicit transaction commits inside the server right after
-- the INSERT. The INSERT's trigger writes the batch's first event, whose lock (event_serialize) is held to
-- commit; as one statement, no client round trip sits between that lock and the commit, so concurrent
-- requests wait on each other for microseconds instead of an event-loop turn each.
--
-- Identical requests (source, range, force) and requests with the same key are serialised by advisory locks,
-- taken body first, then key, so there is no lock cycle. In READ COMMITTED each statement of a VOLATILE
-- function takes a new snapshot, so the look-ups after the locks see every batch committed while we waited.
-- Every Idempotency-Key answered, with the batch it was answered with: also the keys of requests that were
-- de-duplicated onto an existing batch (whose own idempotency_key is another request's, or none), so that a
-- retry with that key finds its batch even after the batch ended.
CREATE TABLE datesync.request_key (
    key        text PRIMARY KEY,
    batch_id   bigint NOT NULL REFERENCES datesync.batch (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION datesync.batch_request(
    p_source text, p_start date, p_end date, p_force boolean, p_key text, p_requested_by text
) RETURNS TABLE (batch_id bigint, days integer, outcome text) LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    found bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(7355609, hashtext(concat_ws('|', p_source, p_start, p_end, p_force)));
    PERFORM pg_advisory_xact_lock(7355610, hashtext(p_key));  -- strict: a NULL key takes no lock
    IF p_key IS NOT NULL THEN
        SELECT coalesce((SELECT k.batch_id FROM datesync.request_key k WHERE k.key = p_key),
                        (SELECT b.id FROM datesync.batch b WHERE b.idempotency_key = p_key)) INTO found;
        IF found IS NOT NULL THEN
            RETURN QUERY SELECT b.id, b.days, 'replayed' FROM datesync.batch b WHERE b.id = found;
            RETURN;
        END IF;
    END IF;
    SELECT b.id INTO found FROM datesync.batch b
    WHERE b.source = p_source AND b.start_date = p_start AND b.end_date = p_end AND b.force = p_force
      AND b.state IN ('queued', 'running') AND NOT b.cancel_requested
    ORDER BY b.id DESC LIMIT 1;
    IF found IS NOT NULL THEN
        IF p_key IS NOT NULL THEN
            INSERT INTO datesync.request_key (key, batch_id) VALUES (p_key, found) ON CONFLICT (key) DO NOTHING;
        END IF;
        RETURN QUERY SELECT b.id, b.days, 'duplicate' FROM datesync.batch b WHERE b.id = found;
        RETURN;
    END IF;
    -- Last: batch_validate checks it (raising check_violation with the field in DETAIL), batch_event_queued
    -- writes its event and batch_notify wakes the daemons, all committed together.
    RETURN QUERY
    INSERT INTO datesync.batch AS b (source, start_date, end_date, force, idempotency_key, requested_by)
    VALUES (p_source, p_start, p_end, p_force, p_key, p_requested_by)
    RETURNING b.id, b.days, 'created';
END $$;

-- The look-up above, by index even when many batches wait (a daemon down for a day while requests arrive).
CREATE INDEX batch_active_identity ON datesync.batch (source, start_date, end_date, force)
    WHERE state IN ('queued', 'running');
