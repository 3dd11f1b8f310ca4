"""Server-side aggregation: a name → Flower strategy registry.

``build_strategy("fedadam", run_config)`` returns Flower's own ``FedAdam`` configured from the
run config; see :mod:`fedge.strategies.registry` for the accepted names and keys.
"""

from fedge.strategies.registry import STRATEGIES, build_strategy

__all__ = ["STRATEGIES", "build_strategy"]
