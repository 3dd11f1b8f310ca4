"""Server-side aggregation: a name → Flower strategy registry, fedge's round loop and its exchanges.

``build_strategy("fedadam", run_config)`` returns Flower's own ``FedAdam`` configured from the
run config; see :mod:`fedge.strategies.registry` for the accepted names and keys.
:func:`run_rounds` (:mod:`fedge.strategies.loop`) runs a strategy round by round with an explicit
server round; its train exchange is plain, streaming (:class:`StreamingExchange`, O(model)
memory) or secure (:class:`SecureExchange`, SecAgg+: the server learns only the sum).
"""

from fedge.strategies.exchange import PlainExchange, TrainExchange
from fedge.strategies.loop import Phase, RoundObserver, run_rounds
from fedge.strategies.registry import STRATEGIES, build_strategy
from fedge.strategies.secure import SecureExchange, check_compatible
from fedge.strategies.streamed import StreamingExchange, can_stream

__all__ = [
    "STRATEGIES",
    "Phase",
    "PlainExchange",
    "RoundObserver",
    "SecureExchange",
    "StreamingExchange",
    "TrainExchange",
    "build_strategy",
    "can_stream",
    "check_compatible",
    "run_rounds",
]
