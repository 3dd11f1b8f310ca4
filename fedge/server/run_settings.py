"""What a run of fedge's ServerApp is configured with, read from Flower's ``run_config``.

Kept apart from the app so the CLI and tests can validate a run config without starting one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedge import fields
from fedge.compress import Scheme
from fedge.eligibility import Eligibility
from fedge.errors import FedgeError
from fedge.security.dp import DPSettings
from fedge.security.secagg import resolve_params
from fedge.security.secagg.wire import SecAggSettings
from fedge.strategies import build_strategy, check_compatible
from fedge.strategies.weights import DEFAULT_MAX_EXAMPLES
from fedge.tasks.settings import TrainSettings, require

#: Run-config keys that other parts of fedge read (each is validated where it is read): a run
#: config holding any other key that is neither a RunSettings nor a TrainSettings field is refused.
OTHER_RUN_KEYS = frozenset(
    {
        "export",  # fedge.server.exports: export at the end of a run / every k rounds
        "export-int8",  # fedge.server.exports
        "max-update-norm",  # fedge.server.screening: norm bound on each update
        "replies-mirror-instructions",  # fedge.server.screening: replies shaped like the instruction
        "node-wait-timeout",  # fedge.server.worker: how long sampling may wait for nodes
    }
)

_STRATEGY_KEYS = (
    "proximal_mu",
    "server_learning_rate",
    "server_momentum",
    "eta",
    "eta_l",
    "beta_1",
    "beta_2",
    "tau",
    "trim_beta",
    "num_malicious_nodes",
    "num_nodes_to_select",
)


#: Run-config keys with this prefix belong to the user (a custom ClientApp run under fedge's
#: ServerApp reads them): never read, never refused. Every other unknown key is a typo.
USER_KEY_PREFIX = "x-"
#: What a user most likely meant by a flag's name used as a run config key (``--set rounds=5``).
FLAG_KEYS = {"rounds": "num-server-rounds"}


@dataclass(frozen=True)
class RunSettings:
    """Everything a run is configured with; ``run_config`` keys are the kebab-case field names.

    Parameters
    ----------
    train : TrainSettings
        Client-side settings (``task``, ``local-epochs``, ``lr``, ``batch-size``, ``seed``,
        ``partition``), read from the same flat ``run_config``.
    num_server_rounds : int (default: 3)
        Federated rounds to run.
    strategy : str (default: "fedavg")
        A name from :data:`fedge.strategies.STRATEGIES`.
    min_clients : int (default: 2)
        Nodes sampled per round at least, and valid updates required per round.
    fraction_train, fraction_evaluate : float (default: 1.0)
        Fraction of connected nodes sampled for training / evaluation.
    central_eval : bool (default: True)
        Evaluate the global model on the task's test split after every round.
    round_timeout : float (default: 600.0)
        Seconds to wait for replies in each train/evaluate phase.
    run_dir : str (default: "fedge-runs/<run_id>")
        Where checkpoints, ``metrics.jsonl`` and ``summary.json`` go.
    resume : bool (default: False)
        Continue from the newest round committed in ``run_dir`` (set by ``fedge run resume``).
    streaming : bool (default: True)
        Fold weighted-mean strategies' replies as they arrive (O(model) server memory).
    send_frozen : bool (default: False)
        For tasks that mark trainable parameters: send the frozen part too, every round, instead
        of only the trainable part (the full-exchange baseline that trainable-only runs match).
    secagg : bool (default: False)
        Secure aggregation (SecAgg+): the server learns only the sum of the updates.
    secagg_k, secagg_t : int (default: 0 = automatic)
        Masking-graph degree and share threshold (tolerates ``k - t`` lost neighbours).
    clip : float (default: 0.0 = none)
        L2 bound every client scales its update to (client-side with secagg; server-side by
        Flower's DP wrapper for central DP). Required with ``dp-noise``.
    quant_bits : int (default: 22)
        Secagg fixed-point bits per element.
    quant_range : float (default: 0.0 = automatic)
        Secagg quantization range; automatic is ``clip`` (plus room for DP noise) or 4.0.
    max_weight : float (default: 1000.0)
        Secagg: ``num-examples`` that count as weight 1.0 (more are capped).
    max_examples : int (default: 100000)
        Largest ``num-examples`` a plaintext reply may report. A device's weight in the mean is
        what it claims, so an unbounded claim lets one device replace the global model with its
        own: a reply whose weight is not a finite number in ``(0, max-examples]`` is rejected
        (audited), never aggregated. The default is far above any one edge device's local set
        (the bundled tasks hold 1,797 and 5,000 samples in all); set it to your largest device's.
    norm_bound_factor : float (default: 10.0; 0 = off)
        Adaptive update-norm bound: a train reply whose update ``||reply - global||`` exceeds this
        multiple of the median of the run's last accepted update norms (before there are
        :data:`fedge.server.bounds.WARMUP` of them: of ``||global||``) is rejected (audited).
        Ignored when ``max-update-norm`` sets a fixed bound.
    dp_noise : float (default: 0.0 = DP off)
        Noise multiplier σ: Gaussian noise of std σ·clip on the sum of the updates.
    dp_delta : float (default: 1e-5)
        δ at which the accountant reports ε.
    select : str (default: "" = every device)
        Sample only devices whose reported properties match every ``key=value``: a tag key of the
        daemons' ``tags`` or ``accelerator`` (e.g. ``"region=eu,accelerator=cuda"``;
        :mod:`fedge.eligibility`). Too few matching devices fail the run, naming the filter.
    require : str (default: "" = nothing)
        Signals a device must report ``yes`` to be sampled and to take a train task
        (``charging``, ``idle``, ``unmetered``); one that no longer does declines (not a failure)
        and another is sampled in its place.
    secret_sampling : bool (default: False)
        Sample nodes with the OS's CSPRNG instead of the run's seed, so the sample is uniform and
        secret: the DP accountant then claims amplification by sampling (q = sampled / eligible)
        and reports ε with and without it.
    compress : str (default: "" = float32 updates)
        Devices send their update compressed: ``int8``, ``int4`` or ``topk:F`` (keep the fraction
        F largest), with error feedback (:mod:`fedge.compress`). Not with ``secagg``: its masked
        vector is 32-bit ring elements whatever ``quant-bits`` says, so nothing would shrink.
    mode : str (default: "sync")
        ``sync``: rounds that wait for every sampled device. ``async``: buffered asynchronous
        aggregation (FedBuff, :mod:`fedge.strategies.buffered`): every connected device trains on
        the newest model it was sent, the server folds each update as it arrives and publishes a
        new model *version* every ``buffer`` updates; ``num-server-rounds`` then counts versions.
    buffer : int (default: 0 = automatic, half of ``min-clients``, at least 1)
        Async: updates folded into each new model version (K). At most ``min-clients``.
    max_staleness : int (default: 5)
        Async: an update trained on a model more than this many versions old is rejected
        (audited, counted in ``metrics.jsonl`` as ``stale-rejected``).
    proximal_mu, server_learning_rate, server_momentum, eta, eta_l, beta_1, beta_2, tau, \
trim_beta, num_malicious_nodes, num_nodes_to_select : optional
        Strategy parameters; unset keeps Flower's default for the chosen strategy.
    """

    train: TrainSettings = dataclasses.field(default_factory=TrainSettings, metadata={"config": False})
    num_server_rounds: int = 3
    strategy: str = "fedavg"
    min_clients: int = 2
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    central_eval: bool = True
    round_timeout: float = 600.0
    run_dir: str = ""
    resume: bool = False
    streaming: bool = True
    send_frozen: bool = False
    secagg: bool = False
    secagg_k: int = 0
    secagg_t: int = 0
    clip: float = 0.0
    quant_bits: int = 22
    quant_range: float = 0.0
    max_weight: float = 1000.0
    max_examples: int = DEFAULT_MAX_EXAMPLES
    norm_bound_factor: float = 10.0
    dp_noise: float = 0.0
    dp_delta: float = 1e-5
    select: str = ""
    require: str = ""
    secret_sampling: bool = False
    compress: str = ""
    mode: str = "sync"
    buffer: int = 0
    max_staleness: int = 5
    proximal_mu: float | None = None
    server_learning_rate: float | None = None
    server_momentum: float | None = None
    eta: float | None = None
    eta_l: float | None = None
    beta_1: float | None = None
    beta_2: float | None = None
    tau: float | None = None
    trim_beta: float | None = None
    num_malicious_nodes: int | None = None
    num_nodes_to_select: int | None = None

    def __post_init__(self) -> None:
        require(self.num_server_rounds >= 1, "num-server-rounds", self.num_server_rounds, "use 1 or more")
        require(self.min_clients >= 1, "min-clients", self.min_clients, "use 1 or more")
        require(
            self.round_timeout > 0, "round-timeout", self.round_timeout, "use a positive number of seconds"
        )
        require(self.clip >= 0, "clip", self.clip, "use 0 (no clipping) or a positive L2 norm")
        require(
            self.dp_noise >= 0, "dp-noise", self.dp_noise, "use 0 (DP off) or a positive noise multiplier"
        )
        require(
            self.dp_noise == 0 or self.clip > 0,
            "dp-noise",
            self.dp_noise,
            "differential privacy needs a bound on each update: add --clip (e.g. --clip 1.0)",
        )
        require(0 < self.dp_delta < 1, "dp-delta", self.dp_delta, "use a probability such as 1e-5")
        require(self.max_weight > 0, "max-weight", self.max_weight, "use a positive number of examples")
        require(self.max_examples > 0, "max-examples", self.max_examples, "use a positive number of examples")
        require(
            self.norm_bound_factor == 0 or self.norm_bound_factor >= 1,
            "norm-bound-factor",
            self.norm_bound_factor,
            "use 0 (no adaptive bound) or a multiple of at least 1, e.g. 10",
        )
        Eligibility.parse(self.select, self.require)
        if self.compress:
            Scheme.parse(self.compress)
            require(
                not self.secagg,
                "compress",
                self.compress,
                "drop --compress with --secagg: masked updates travel as 32-bit ring elements "
                "whatever --quant-bits is, so there is nothing to compress",
            )
        # Settings that depend on the strategy registry and on each other, checked here too so that
        # `fedge run start` (which builds RunSettings) refuses them before a run exists.
        strategy = build_strategy(self.strategy, self.strategy_config())  # name and parameter types
        self._check_mode()
        if self.secagg:
            check_compatible(strategy)
            self.secagg_settings()  # k, t, clients and quant-bits (resolve_params)

    def _check_mode(self) -> None:
        """``mode``, ``buffer``, ``max-staleness`` and what asynchronous aggregation cannot do (yet)."""
        require(self.mode in ("sync", "async"), "mode", self.mode, "use sync or async")
        require(self.buffer >= 0, "buffer", self.buffer, "use 0 (automatic) or a number of updates")
        require(self.max_staleness >= 0, "max-staleness", self.max_staleness, "use 0 or more versions")
        if self.mode != "async":
            return
        require(
            self.buffer_size <= self.min_clients,
            "buffer",
            self.buffer,
            f"a version needs updates from {self.buffer_size} devices but the run waits for only "
            f"{self.min_clients}: lower --buffer or raise --min-clients",
        )
        # Each buffer's K updates come from whichever devices answer first, so no cohort exists
        # when the devices must exchange keys and shares (README, "Asynchronous rounds").
        if self.secagg:
            raise FedgeError(
                "--secagg cannot run with --mode async: SecAgg+ masks cancel only over a cohort "
                "fixed before the devices train, and an async buffer is whichever K updates arrive "
                "first",
                "drop --secagg, or use --mode sync for secure aggregation",
            )
        require(
            self.dp_noise == 0,
            "dp-noise",
            self.dp_noise,
            "the DP accountant counts synchronous rounds: drop --dp-noise, or use --mode sync",
        )
        require(
            self.strategy == "fedavg",
            "strategy",
            self.strategy,
            "async mode is FedBuff: FedAvg's weighted mean of staleness-weighted updates; "
            "use --strategy fedavg",
        )

    @property
    def buffer_size(self) -> int:
        """Async: updates per model version (``buffer``, or half of ``min-clients`` when 0)."""
        return self.buffer or max(1, self.min_clients // 2)

    @property
    def dp(self) -> DPSettings:
        """Differential-privacy settings (``noise_multiplier`` 0: off)."""
        return DPSettings(noise_multiplier=self.dp_noise, clip_norm=self.clip or 1.0, delta=self.dp_delta)

    def secagg_settings(self) -> SecAggSettings:
        """Secure-aggregation settings, with the quantization range derived when automatic."""
        min_contributors = max(
            self.min_clients,
            resolve_params(self.min_clients, self.secagg_k, self.secagg_t, 1.0, self.quant_bits).t,
        )
        quant_range = self.quant_range
        if quant_range <= 0:
            # An L2 bound also bounds every element; DP noise shares get six standard deviations.
            noise = 6 * self.dp_noise * self.clip / math.sqrt(min_contributors)
            quant_range = self.clip + noise if self.clip > 0 else 4.0
        return SecAggSettings(
            k=self.secagg_k,
            t=self.secagg_t,
            l2_clip=self.clip,
            clip=quant_range,
            quant_bits=self.quant_bits,
            max_weight=self.max_weight,
            dp=self.dp,
            min_contributors=min_contributors,
        )

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any], run_id: int = 0) -> RunSettings:
        """Parse and validate ``run_config``; ``run_id`` names the default run directory.

        The whole run config is checked here: a key that is no run or train setting, not in
        :data:`OTHER_RUN_KEYS` and not a user key (:data:`USER_KEY_PREFIX`) is an error with a
        suggestion (a ``--set`` typo fails the run before it starts instead of training with a
        default).
        """
        own, train = fields.keys_of(cls), fields.keys_of(TrainSettings)
        run_config = {k: v for k, v in run_config.items() if not k.startswith(USER_KEY_PREFIX)}
        settings = fields.load(
            cls, run_config, "run config", others=train | OTHER_RUN_KEYS, aliases=FLAG_KEYS
        )
        return dataclasses.replace(
            settings,
            train=TrainSettings.from_config(run_config, "run config", others=own | OTHER_RUN_KEYS),
            run_dir=settings.run_dir or f"fedge-runs/{run_id}",
        )

    def strategy_config(self) -> dict[str, Any]:
        """The kebab-case keys :func:`fedge.strategies.build_strategy` reads."""
        config: dict[str, Any] = {
            "min-clients": self.min_clients,
            "fraction-train": self.fraction_train,
            "fraction-evaluate": self.fraction_evaluate,
        }
        for name in _STRATEGY_KEYS:
            if getattr(self, name) is not None:
                config[name.replace("_", "-")] = getattr(self, name)
        return config

    def as_dict(self) -> dict[str, Any]:
        """All settings as flat kebab-case key/values (for ``summary.json``)."""
        flat = {**self.train.to_config()}
        for field in dataclasses.fields(self):
            if field.name != "train" and getattr(self, field.name) is not None:
                flat[field.name.replace("_", "-")] = getattr(self, field.name)
        return flat
