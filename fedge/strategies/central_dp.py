"""Central differential privacy: Flower's server-side fixed-clipping wrapper, made to match the accountant.

Server-side only (it wraps a Flower strategy), so it lives here and not in :mod:`fedge.security.dp`,
which the edge daemon imports for clipping and noise shares. The mechanism and its accounting are
described there.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg, Strategy

from fedge.security.dp import DPError, DPSettings


class _UniformCentralDP(DifferentialPrivacyServerSideFixedClipping):
    """Flower's central-DP wrapper with uniform weights and noise calibrated to the replies received.

    See :func:`central_dp_strategy` for why; built only through it.
    """

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Refuse integer arrays before any client trains: Flower would clip and noise them as floats."""
        integer = [name for name, array in arrays.items() if np.dtype(array.dtype).kind != "f"]
        if integer:
            raise DPError(
                f"central DP cannot clip the model's non-float arrays: {', '.join(integer)}",
                "drop integer buffers (e.g. BatchNorm num_batches_tracked) from the model, or use "
                "secure aggregation with client-side DP",
            )
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Equalise the weights, let Flower clip, average and noise, then top up the noise."""
        received = [reply for reply in replies if not reply.has_error()]
        key = cast(FedAvg, self.strategy).weighted_by_key
        for reply in received:
            for record in reply.content.metric_records.values():
                if key in record:
                    record[key] = 1
        # Flower's wrapper gives up on the round if any reply is an error; a lost client is
        # already counted by the caller, and the noise top-up below covers the smaller sum.
        arrays, metrics = super().aggregate_train(server_round, received)
        if arrays is not None and len(received) < self.num_sampled_clients:
            arrays = self._top_up(arrays, len(received))
        return arrays, metrics

    def _top_up(self, arrays: ArrayRecord, received: int) -> ArrayRecord:
        """Turn Flower's noise, sigma*C/sampled, into sigma*C/received on a mean of ``received``."""
        sigma_c = self.noise_multiplier * self.clipping_norm
        std = sigma_c * math.sqrt(1 / received**2 - 1 / self.num_sampled_clients**2)
        rng = np.random.default_rng()
        return ArrayRecord(
            {
                name: Array(value + rng.normal(0.0, std, size=value.shape).astype(value.dtype))
                for name, value in zip(arrays.keys(), arrays.to_numpy_ndarrays(), strict=True)
            }
        )


def central_dp_strategy(
    strategy: Strategy, settings: DPSettings, num_sampled_clients: int
) -> DifferentialPrivacyServerSideFixedClipping:
    """Central DP for runs without secure aggregation: Flower's server-side fixed-clipping wrapper.

    The server clips each update (reply minus global weights) to ``clip_norm`` and, after the
    wrapped strategy aggregates, adds Gaussian noise to the aggregated weights with standard
    deviation ``noise_multiplier * clip_norm / num_sampled_clients`` (Flower's ``compute_stdv``).
    On the *average* of ``n = num_sampled_clients`` clipped updates that is ``sigma * C`` on their
    sum: the mechanism :class:`PrivacyAccountant` accounts, but only under two conditions Flower
    does not enforce (it only warns), which the returned wrapper makes true:

    * uniform weights: FedAvg weights updates by ``num-examples``, and a client whose share of the
      weight exceeds 1/n moves the average by more than C/n; its effective sigma would be lower.
      The wrapper sets each reply's weight to 1 before aggregation (train metrics are then plain
      means too);
    * n replies: with only m < n replies the average is sum/m while the noise stays sigma*C/n, so
      the sum carries sigma*C*m/n. The wrapper tops the noise up to sigma*C/m (the number of
      replies is taken as public, as Flower and DP-FedAvg do).

    Parameters
    ----------
    strategy : Strategy
        A strategy whose ``aggregate_train`` is FedAvg's weighted mean (FedAvg, FedProx). Others
        are refused: a median, trimmed mean or Krum choice moves by up to C when one update
        changes, not C/n, and FedOpt/FedAvgM post-process the un-noised mean before the noise.
    settings : DPSettings
        ``noise_multiplier`` (> 0) and ``clip_norm``.
    num_sampled_clients : int
        Clients sampled per round (>= 1), as configured on ``strategy``.

    Returns
    -------
    DifferentialPrivacyServerSideFixedClipping
        Flower's wrapper (a subclass adding the two fixes above) around ``strategy``. Its
        ``configure_train`` raises :class:`DPError` if the model has non-float arrays: Flower would
        count them in the clipping norm and return them as noised float64.

    Raises
    ------
    DPError
        If DP is off, ``num_sampled_clients < 1``, or ``strategy`` does not aggregate by a mean.
    """
    if not settings.enabled:
        raise DPError("central DP needs a noise multiplier > 0", "DP is off: use the strategy unwrapped")
    if num_sampled_clients < 1:
        raise DPError(
            f"num_sampled_clients must be >= 1, got {num_sampled_clients}", "pass clients sampled per round"
        )
    if not isinstance(strategy, FedAvg) or type(strategy).aggregate_train is not FedAvg.aggregate_train:
        raise DPError(
            f"central DP cannot be accounted for strategy {type(strategy).__name__}",
            "use fedavg or fedprox with DP: their aggregate is a mean, whose sensitivity is C/n",
        )

    return _UniformCentralDP(
        strategy,
        noise_multiplier=settings.noise_multiplier,
        clipping_norm=settings.clip_norm,
        num_sampled_clients=num_sampled_clients,
    )
