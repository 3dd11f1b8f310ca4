"""The one error type of the SecAgg+ core, kept in its own module so every other module can raise it."""

from __future__ import annotations

from fedge.errors import FedgeError


class SecAggError(FedgeError):
    """Secure aggregation cannot proceed safely: bad parameters, a refused request, or too many dropouts.

    Raised instead of returning a degraded result because every failure mode here would otherwise
    either leak an individual update or silently produce a wrong sum.
    """
