"""Backoff and lockout after failed attempts, per key (a source address, a device name).

Why: enrollment is the one unauthenticated service. Tokens carry 256 random bits, so guessing
one is hopeless, but an endpoint that answers thousands of wrong tokens a second still invites
it, burns the server's CPU on TLS and fsynced audit lines, and lets anyone probe names. The
``max_failures``-th failed attempt locks a key for ``lockout`` seconds, and every further one
(after the lock ends) doubles that, up to :data:`MAX_LOCKOUT`; a success clears the key. While
any key of a request is locked the request is refused before its token is even looked at. The
price of a per-name key: wrong tokens for a name delay that name's real enrollment as well.

Memory is bounded: at most :data:`MAX_KEYS` keys are tracked, the least recently failed
forgotten first (a flood of distinct sources can only make the lockout forget, not grow).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

#: Longest lockout, however many failures (seconds).
MAX_LOCKOUT = 3600.0
#: Keys (sources, names) tracked at most.
MAX_KEYS = 10_000


@dataclass
class _Failures:
    count: int = 0
    locked_until: float = 0.0


class Lockout:
    """Failed-attempt counters with exponential lockout; thread-safe."""

    def __init__(
        self, max_failures: int, lockout: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max_failures = max_failures
        self._lockout = lockout
        self._clock = clock
        self._keys: OrderedDict[str, _Failures] = OrderedDict()
        self._lock = threading.Lock()

    def remaining(self, *keys: str) -> float:
        """Seconds until every one of ``keys`` may try again (0: now)."""
        now = self._clock()
        with self._lock:
            return max((f.locked_until - now for k in keys if (f := self._keys.get(k))), default=0.0)

    def failed(self, *keys: str) -> None:
        """Count a failed attempt against each key; lock those at ``max_failures`` or more."""
        now = self._clock()
        with self._lock:
            for key in keys:
                entry = self._keys.pop(key, None) or _Failures()
                entry.count += 1
                excess = entry.count - self._max_failures
                if excess >= 0:
                    entry.locked_until = now + min(MAX_LOCKOUT, self._lockout * 2 ** min(excess, 32))
                self._keys[key] = entry
            while len(self._keys) > MAX_KEYS:
                self._keys.popitem(last=False)

    def succeeded(self, *keys: str) -> None:
        """Forget the keys' failures (an honest device that mistyped once is not held back)."""
        with self._lock:
            for key in keys:
                self._keys.pop(key, None)
