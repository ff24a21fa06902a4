"""Admission of new streams: at most ``SSE_MAX_CONNECT_RATE`` per second.

After a deploy or a network blip every client of a replica reconnects at
once.  Each connect costs a token verification, a broker subscription and a
history read; taken all at once they starve the open streams and the
deliveries.  A token bucket admits a steady rate with a burst of one second's
worth; a refused client is told to come back after a random 1 to 5 seconds,
so the storm is spread out rather than replayed in step.

A refusal costs no allocation and at most one log line per
:data:`LOG_INTERVAL`: a storm must not turn into a flood of log lines.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable

from .errors import CapacityError

__all__ = ["LOG_INTERVAL", "REFUSAL", "RETRY_AFTER", "Admission", "TokenBucket"]

logger = logging.getLogger(__name__)

#: The reason a refused client reads in the 503 body.
REFUSAL = "too many new streams; retry later"
#: The range (seconds, inclusive) of the ``Retry-After`` a refused client gets.
RETRY_AFTER = (1, 5)
#: At most one log line per this many seconds about refused streams.
LOG_INTERVAL = 10.0


class TokenBucket:
    """``rate`` admissions per second, at most ``burst`` of them at once.

    Over any window of ``t`` seconds it admits at most ``rate * t + burst``.
    """

    __slots__ = ("rate", "burst", "_tokens", "_stamp", "_clock")

    def __init__(
        self, rate: float, burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        # Below one token the bucket could never admit anything.
        self.burst = max(1.0, rate if burst is None else burst)
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()

    def admit(self) -> bool:
        """Take one token if there is one."""
        now = self._clock()
        elapsed = now - self._stamp
        tokens = self._tokens
        if elapsed > 0:
            tokens = min(self.burst, tokens + elapsed * self.rate)
            self._stamp = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return True
        self._tokens = tokens
        return False


class Admission:
    """The bucket, the jittered refusal and the rate-limited log line about refusals."""

    __slots__ = ("_bucket", "_clock", "_random", "refused", "_unlogged", "_logged_at")

    def __init__(
        self, rate: float, clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._bucket = TokenBucket(rate, clock=clock)
        self._clock = clock
        self._random = rng or random.Random()
        #: Streams refused since the process started.
        self.refused = 0
        self._unlogged = 0
        self._logged_at = -math.inf

    def check(self) -> None:
        """Admit one new stream, or raise :class:`CapacityError` (503, Retry-After)."""
        if self._bucket.admit():
            return
        self.refused += 1
        self._unlogged += 1
        now = self._clock()
        if now - self._logged_at >= LOG_INTERVAL:
            logger.warning(
                "refusing new streams above %g per second (SSE_MAX_CONNECT_RATE): "
                "%d refused since the last such line", self._bucket.rate, self._unlogged,
            )
            self._unlogged = 0
            self._logged_at = now
        raise CapacityError(REFUSAL, retry_after=self._random.randint(*RETRY_AFTER))
