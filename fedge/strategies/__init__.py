"""Server-side aggregation: a name → Flower strategy registry, and wrappers Flower lacks.

``build_strategy("fedadam", run_config)`` returns Flower's own ``FedAdam`` configured from the
run config; see :mod:`fedge.strategies.registry` for the accepted names and keys.
:class:`SecureAggregation` wraps a weighted-mean strategy so the server learns only the sum of
the clients' updates (SecAgg+).
"""

from fedge.strategies.registry import STRATEGIES, build_strategy
from fedge.strategies.secure import SecureAggregation, check_compatible

__all__ = ["STRATEGIES", "SecureAggregation", "build_strategy", "check_compatible"]
