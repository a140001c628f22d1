from datesync.daemon.sync.outcome import Kind, Outcome, error_text, retry_delay


def test_retry_delay_doubles_with_bounded_jitter() -> None:
    for attempt, base in [(1, 10.0), (2, 20.0), (3, 40.0)]:
        delays = [retry_delay(10, attempt) for _ in range(200)]
        assert min(delays) >= base * 0.8 and max(delays) <= base * 1.2
        assert max(delays) - min(delays) > 0  # jittered


def test_failure_with_attempts_left_is_a_retry() -> None:
    assert Outcome(1, 1, Kind.FAILED, retry_in=3.0).row_state == "queued"
    assert Outcome(1, 1, Kind.FAILED).row_state == "failed"
    assert Outcome(1, 1, Kind.SUCCEEDED).row_state == "succeeded"


def test_error_text_is_one_bounded_line() -> None:
    assert error_text(ValueError("bad")) == "ValueError: bad"
    assert error_text(RuntimeError()) == "RuntimeError: RuntimeError()"
    long = error_text(ValueError("x" * 5000))
    assert len(long.encode()) <= 4096 and long.endswith("characters cut]")
