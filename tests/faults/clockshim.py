"""`python -m tests.faults.clockshim <datesync arguments>`: the datesync CLI with a wrong clock.

FAULTS_CLOCK_OFFSET (seconds) moves the wall clock (time.time) and the monotonic clock; FAULTS_CLOCK_RATE makes
the monotonic clock run that many times faster than real time, so a retry window of a minute passes in seconds
while every sleep still takes real time (the loop waits in real seconds, its deadlines are read from the fast
clock). Used when libfaketime is missing, and to run out STARTUP_TIMEOUT quickly.
"""

from __future__ import annotations

import os
import time


def install(offset: float, rate: float) -> None:
    real_time, real_time_ns, real_mono = time.time, time.time_ns, time.monotonic
    origin = real_mono()

    def fake_time() -> float:
        return real_time() + offset

    def fake_time_ns() -> int:
        return real_time_ns() + int(offset * 1e9)

    def fake_monotonic() -> float:
        return origin + (real_mono() - origin) * rate + offset

    time.time = fake_time
    time.time_ns = fake_time_ns
    time.monotonic = fake_monotonic


def main() -> None:
    install(float(os.environ.get("FAULTS_CLOCK_OFFSET", "0")), float(os.environ.get("FAULTS_CLOCK_RATE", "1")))
    from datesync.cli import main as cli

    cli()


if __name__ == "__main__":
    main()
