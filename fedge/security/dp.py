"""Differential privacy (security layer 4): clipping, distributed Gaussian noise, RDP accounting.

Layers: docs/architecture.md, "Security, in layers".

Why: sealing and secure aggregation hide each update, but the aggregate itself (and so every model
the run publishes) can still memorise one device's data. DP bounds what the aggregate reveals:
each client's update is clipped to L2 norm ``C`` and the *sum* of the updates carries Gaussian
noise of standard deviation ``sigma * C`` per coordinate. That is the Gaussian mechanism on the
clipped sum, whose L2 sensitivity under adding or removing one client is ``C``; the
:class:`PrivacyAccountant` turns ``sigma``, the client sampling rate and the number of rounds into
an (ε, δ) guarantee.

Unit of privacy: one client's whole contribution to a round (user-level DP, McMahan et al. 2018),
with neighbouring federations differing by one client added or removed. Training metrics a client
reports next to its update (losses, ``num-examples``) are not covered.

Two ways to add the noise, the same accounting:

* with secure aggregation, nobody sees a single update, so each client adds a share of the noise
  (:func:`noise_share`) and the shares of the clients in the sum add up to ``sigma * C``;
* without it, the server adds all the noise
  (:func:`fedge.strategies.central_dp.central_dp_strategy`, Flower's own wrapper).

Not covered: floating-point side channels of sampled Gaussians (Mironov 2012) and the noise RNG
(numpy's, not a cryptographic generator), both standard in deployed FL systems.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedge.errors import FedgeError

__all__ = ["DPError", "DPSettings", "PrivacyAccountant", "clip_update", "noise_share"]


class DPError(FedgeError):
    """Differential-privacy settings or inputs that cannot give the guarantee asked for."""


@dataclass(frozen=True)
class DPSettings:
    """How much noise, on updates bounded how tightly, reported at which δ.

    Parameters
    ----------
    noise_multiplier : float
        ``sigma``: standard deviation of the *total* noise on the sum of the clipped updates, in
        units of ``clip_norm``. 0 turns DP off (no noise, no guarantee).
    clip_norm : float
        ``C``: L2 bound on each client's model update (local minus global weights, all arrays
        flattened together). Too small biases the model, too large needs more noise for the same ε.
    delta : float
        The δ at which ε is reported; keep it well below 1 / number of clients.
    """

    noise_multiplier: float = 0.0
    clip_norm: float = 1.0
    delta: float = field(kw_only=True)  # no default: a run's is RunSettings.dp_delta

    def __post_init__(self) -> None:
        """Refuse values for which no guarantee (or no model) can come out."""
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise DPError(
                f"DP noise multiplier must be a finite number >= 0, got {self.noise_multiplier}",
                "use 0 to turn DP off, or about 1.0 for a meaningful guarantee",
            )
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise DPError(
                f"DP clip norm must be a finite number > 0, got {self.clip_norm}",
                "set it near the median L2 norm of a client's update in a run without DP",
            )
        if not 0 < self.delta < 1:
            raise DPError(
                f"DP delta must be between 0 and 1 (exclusive), got {self.delta}",
                "use a delta well below 1 / number of clients, e.g. 1e-5",
            )

    @property
    def enabled(self) -> bool:
        """Whether any noise is added (``noise_multiplier > 0``)."""
        return self.noise_multiplier > 0


def _check_floating(arrays: Sequence[np.ndarray]) -> None:
    """Refuse non-float arrays: they can be neither scaled nor noised without changing dtype."""
    for i, array in enumerate(arrays):
        if array.dtype.kind != "f":
            raise DPError(
                f"update array {i} has dtype {array.dtype}; DP needs floating-point arrays",
                "leave integer buffers (e.g. BatchNorm num_batches_tracked) out of the DP update",
            )


def clip_update(delta: Sequence[np.ndarray], clip_norm: float) -> tuple[list[np.ndarray], float]:
    """Scale all arrays jointly so that their global L2 norm is at most ``clip_norm``.

    Jointly, not per array: the sensitivity the noise is calibrated to is the norm of the whole
    update. Under the bound the arrays come back unchanged (as copies); over it, all are scaled by
    the same factor, so the update keeps its direction.

    Parameters
    ----------
    delta : Sequence[np.ndarray]
        The client's model update (local minus global weights), floating-point arrays.
    clip_norm : float
        The bound ``C`` (> 0).

    Returns
    -------
    tuple[list[np.ndarray], float]
        New arrays (the inputs are not modified), same shapes and dtypes, and the norm of the
        update before clipping (worth logging: it is how ``C`` gets tuned).

    Raises
    ------
    DPError
        If an array is not floating-point, ``clip_norm`` is not positive, or the update is not
        finite (no scaling bounds an infinite or NaN norm).
    """
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise DPError(f"clip norm must be a finite number > 0, got {clip_norm}", "pass DPSettings.clip_norm")
    _check_floating(delta)
    # float64 accumulation: squares of float32 updates overflow or lose precision.
    norm = math.sqrt(sum(float(np.vdot(x, x)) for x in (d.astype(np.float64, copy=False) for d in delta)))
    if not math.isfinite(norm):
        raise DPError(
            "model update is not finite (inf or NaN): it cannot be clipped",
            "lower the client learning rate; training diverged",
        )
    if norm <= clip_norm:
        return [a.copy() for a in delta], norm
    # Shrink by a few ulps of the least precise dtype so that rounding of the products cannot
    # push the result's norm above C (the server may check the bound exactly).
    eps = max((float(np.finfo(a.dtype).eps) for a in delta), default=0.0)
    scale = clip_norm / norm * (1 - 4 * eps)
    return [a * a.dtype.type(scale) for a in delta], norm


def noise_share(
    like: Sequence[np.ndarray], settings: DPSettings, min_contributors: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """One client's share of distributed Gaussian noise, for secure aggregation.

    Each client adds independent noise N(0, (sigma*C)^2 / t) per coordinate, ``t =
    min_contributors``. Variances add, so the sum over ``k`` clients carries noise of standard
    deviation ``sigma * C * sqrt(k / t)``: exactly the target ``sigma * C`` when ``k = t``, more
    when ``k > t`` (a smaller ε than accounted: safe), and *less* when ``k < t`` (a larger ε than
    accounted: the guarantee fails). Dropouts therefore never help: a client that drops out takes
    its share of the noise with it. That is why the caller passes the minimum number of clients
    that may survive into the sum (the secure-aggregation threshold), not the number sampled.
    The same argument covers collusion: clients who collude with the server know, and can
    subtract, their own shares, so the guarantee against that coalition rests on the shares of
    the honest survivors alone; ``t`` should count only those.

    Parameters
    ----------
    like : Sequence[np.ndarray]
        Arrays whose shapes and (floating-point) dtypes the shares take, e.g. the clipped update.
    settings : DPSettings
        ``noise_multiplier`` and ``clip_norm``; when DP is off the shares are zeros, so the caller
        can add them unconditionally, and ``rng`` is not drawn from.
    min_contributors : int
        ``t`` above (>= 1).
    rng : np.random.Generator
        Source of the noise; use a fresh ``np.random.default_rng()`` (OS entropy), never a seeded
        one: anyone who can reproduce the noise can remove it.

    Returns
    -------
    list[np.ndarray]
        One new array per input, same shape and dtype.
    """
    if min_contributors < 1:
        raise DPError(
            f"min_contributors must be >= 1, got {min_contributors}",
            "pass the minimum number of clients that can survive into the aggregate",
        )
    _check_floating(like)
    if not settings.enabled:
        return [np.zeros_like(a) for a in like]
    std = settings.noise_multiplier * settings.clip_norm / math.sqrt(min_contributors)
    return [rng.normal(0.0, std, size=a.shape).astype(a.dtype, copy=False) for a in like]


def _unconverged_order_filter(record: logging.LogRecord) -> bool:
    """Drop dp-accounting's per-step warnings about fractional RDP orders it had to leave out.

    For q < 1 the series for some orders near 1 does not converge; the library then gives those
    orders infinite RDP, which can only make ε larger (safe), and warns on every composition:
    several lines per round in the server log for a harmless fact.
    """
    return not str(record.msg).startswith("_compute_log_a_frac failed to converge")


class PrivacyAccountant:
    """ε spent so far by a run, by Rényi-DP accounting (Mironov 2017; Mironov et al. 2019).

    The math is Google's ``dp-accounting`` (``dp_accounting.rdp.RdpAccountant``): each round is a
    ``PoissonSampledDpEvent(q, GaussianDpEvent(sigma))``, and ``step(k)`` composes ``k`` of them
    as one ``SelfComposedDpEvent``. The accounted mechanism is the Gaussian mechanism on the sum
    of clipped updates (sensitivity ``C``, noise ``sigma * C``) with neighbours differing by one
    client added or removed; the unit of privacy is one client's whole contribution per round
    (user-level DP). RDP composes tightly over rounds and converts to (ε, δ) at the end.

    Sampling: with ``sampling_rate`` q < 1 a client takes part in a round with probability q, and
    privacy amplification by subsampling lowers ε. Flower samples a fixed number of clients
    without replacement; that is accounted as Poisson sampling with q = sampled / available, the
    standard approximation (as in DP-FedAvg and TF Privacy). Only claim q < 1 if the sample is
    random and secret: a client that is always picked, or whose selection is public, gets q = 1.

    Parameters
    ----------
    noise_multiplier : float
        ``sigma`` (>= 0); 0 means DP is off and ε is infinite.
    delta : float
        The δ at which ε is reported, in (0, 1).
    sampling_rate : float
        q in (0, 1]; 1 (every client in every round) is plain Gaussian composition.
    """

    def __init__(self, noise_multiplier: float, delta: float, sampling_rate: float = 1.0) -> None:
        DPSettings(noise_multiplier=noise_multiplier, delta=delta)  # same checks, same messages
        if not 0 < sampling_rate <= 1:
            raise DPError(
                f"sampling rate must be in (0, 1], got {sampling_rate}",
                "pass clients sampled per round / clients available, or 1.0 for all of them",
            )
        self._sigma = float(noise_multiplier)
        self._delta = float(delta)
        self._q = float(sampling_rate)
        self._rounds = 0
        self._epsilon = 0.0 if self._sigma > 0 else math.inf
        self._backend: Any = None
        if self._sigma > 0:
            from dp_accounting import rdp  # lazy: pulls scipy; `import fedge.security.dp` stays cheap

            self._backend = rdp.RdpAccountant()

    def step(self, rounds: int = 1, sampling_rate: float | None = None) -> float:
        """Compose ``rounds`` more rounds (>= 1); return ε at δ for all rounds so far.

        ``sampling_rate``: these rounds' q, when it changes from round to round (secret sampling
        from a fleet whose eligible population varies); ``None`` keeps the constructor's.
        """
        if rounds < 1:
            raise DPError(f"rounds must be >= 1, got {rounds}", "call step() once per aggregated round")
        q = self._q if sampling_rate is None else float(sampling_rate)
        if not 0 < q <= 1:
            raise DPError(f"sampling rate must be in (0, 1], got {q}", "pass sampled / available clients")
        self._rounds += rounds
        if self._backend is not None:
            from dp_accounting import dp_event

            round_event = dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(self._sigma))
            absl = logging.getLogger("absl")
            absl.addFilter(_unconverged_order_filter)
            try:
                self._backend.compose(dp_event.SelfComposedDpEvent(round_event, rounds))
            finally:
                absl.removeFilter(_unconverged_order_filter)
            self._epsilon = float(self._backend.get_epsilon(self._delta))
        return self._epsilon

    @property
    def epsilon(self) -> float:
        """ε at δ so far: 0.0 before any round, ``math.inf`` when DP is off."""
        return self._epsilon

    @property
    def rounds(self) -> int:
        """Rounds composed so far."""
        return self._rounds

    def describe(self) -> str:
        """One line for logs and run summaries."""
        if self._backend is None:
            return "DP off (noise multiplier 0)"
        return (
            f"(ε={self._epsilon:.2f}, δ={self._delta:g})-DP after {self._rounds} rounds, "
            f"σ={self._sigma:g}, q={self._q}"
        )
