"""The one retry schedule every loop uses: a base delay multiplied by `factor` per failure, capped, with jitter so
that many clients failing together do not retry together. Small enough that a library (tenacity, backoff) would
bring more API than it saves; what those add (decorators, stop conditions) our loops express themselves."""

from __future__ import annotations

import dataclasses
import random


@dataclasses.dataclass(frozen=True, slots=True)
class Backoff:
    base: float  # seconds after the first failure
    cap: float = float("inf")  # never more than this (before jitter)
    factor: float = 2.0
    jitter: tuple[float, float] = (0.8, 1.2)  # the delay is multiplied by a uniform draw from this range

    def delay(self, failures: int) -> float:
        """Seconds to wait after `failures` failures in a row (1 for the first)."""
        exponent = max(failures, 1) - 1
        # Past the cap the power would only overflow: stop raising once it is reached.
        raw = self.base
        for _ in range(exponent):
            raw *= self.factor
            if raw >= self.cap:
                break
        return min(raw, self.cap) * random.uniform(*self.jitter)
