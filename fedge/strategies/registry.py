"""Strategy names → Flower's own Message-API strategy classes, configured from ``run_config``.

fedge never reimplements aggregation: every name maps to a class in ``flwr.serverapp.strategy``
and only translates kebab-case run-config keys into that class's constructor arguments. Keys a
strategy does not take are ignored (one run config can serve several strategies); missing keys
keep Flower's defaults for that class.

Keys: ``min-clients`` (→ ``min_train_nodes``, ``min_evaluate_nodes``, ``min_available_nodes``),
``fraction-train``, ``fraction-evaluate``, ``proximal-mu`` (fedprox), ``server-learning-rate``,
``server-momentum`` (fedavgm), ``eta``, ``eta-l``, ``beta-1``, ``beta-2``, ``tau`` (fedadam,
fedyogi; fedadagrad has no betas), ``trim-beta`` (fedtrimmedavg), ``num-malicious-nodes``
(krum, multikrum, bulyan), ``num-nodes-to-select`` (multikrum).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.serverapp import strategy as fl

from fedge.errors import FedgeError

_FEDOPT = {"eta": "eta", "eta-l": "eta_l", "beta-1": "beta_1", "beta-2": "beta_2", "tau": "tau"}
_MALICIOUS = {"num-malicious-nodes": "num_malicious_nodes"}

# name -> (Flower class, {run-config key: constructor argument})
_REGISTRY: dict[str, tuple[type[fl.FedAvg], dict[str, str]]] = {
    "fedavg": (fl.FedAvg, {}),
    "fedprox": (fl.FedProx, {"proximal-mu": "proximal_mu"}),
    "fedavgm": (
        fl.FedAvgM,
        {"server-learning-rate": "server_learning_rate", "server-momentum": "server_momentum"},
    ),
    "fedadam": (fl.FedAdam, _FEDOPT),
    "fedyogi": (fl.FedYogi, _FEDOPT),
    "fedadagrad": (fl.FedAdagrad, {"eta": "eta", "eta-l": "eta_l", "tau": "tau"}),
    "fedmedian": (fl.FedMedian, {}),
    "fedtrimmedavg": (fl.FedTrimmedAvg, {"trim-beta": "beta"}),
    "krum": (fl.Krum, _MALICIOUS),
    "multikrum": (fl.MultiKrum, {**_MALICIOUS, "num-nodes-to-select": "num_nodes_to_select"}),
    "bulyan": (fl.Bulyan, _MALICIOUS),
}
_INT_ARGS = {"num_malicious_nodes", "num_nodes_to_select"}

STRATEGIES: tuple[str, ...] = tuple(_REGISTRY)


def build_strategy(name: str, run_config: Mapping[str, Any]) -> fl.Strategy:
    """Instantiate strategy ``name`` with the parameters found in ``run_config``."""
    if name not in _REGISTRY:
        raise FedgeError(f"unknown strategy '{name}'", f"choose one of: {', '.join(STRATEGIES)}")
    cls, keys = _REGISTRY[name]
    kwargs: dict[str, Any] = {}
    if "min-clients" in run_config:
        min_clients = _number(run_config, "min-clients", int)
        if min_clients < 1:
            raise FedgeError(f"invalid min-clients: {min_clients}", "use 1 or more")
        kwargs.update(
            min_train_nodes=min_clients, min_evaluate_nodes=min_clients, min_available_nodes=min_clients
        )
    for key, arg in (("fraction-train", "fraction_train"), ("fraction-evaluate", "fraction_evaluate")):
        if key in run_config:
            kwargs[arg] = _number(run_config, key, float)
            if not 0.0 <= kwargs[arg] <= 1.0:
                raise FedgeError(f"invalid {key}: {kwargs[arg]}", "use a fraction between 0.0 and 1.0")
    for key, arg in keys.items():
        if key in run_config:
            kwargs[arg] = _number(run_config, key, int if arg in _INT_ARGS else float)
    _check(name, kwargs)
    return cls(**kwargs)


def _check(name: str, kwargs: dict[str, Any]) -> None:
    """Reject combinations Flower would accept but that make a run silently useless."""
    malicious = kwargs.get("num_malicious_nodes", 0)
    clients = kwargs.get("min_train_nodes", 2)
    if malicious < 0:
        raise FedgeError(f"invalid num-malicious-nodes: {malicious}", "use 0 or more")
    if name == "bulyan" and clients < 4 * malicious + 3:
        raise FedgeError(
            f"bulyan with num-malicious-nodes={malicious} needs at least {4 * malicious + 3} clients, "
            f"min-clients is {clients}",
            "raise --min-clients (Bulyan needs 4*num-malicious-nodes + 3 updates per round)",
        )
    if kwargs.get("num_nodes_to_select", 1) < 1:
        raise FedgeError(f"invalid num-nodes-to-select: {kwargs['num_nodes_to_select']}", "use 1 or more")
    if not 0.0 <= kwargs.get("beta", 0.0) < 0.5:
        raise FedgeError(
            f"invalid trim-beta: {kwargs['beta']}", "trim a fraction in [0.0, 0.5) from each end"
        )


def _number(run_config: Mapping[str, Any], key: str, kind: type) -> Any:
    value = run_config[key]
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (kind is int and not isinstance(value, int))
    ):
        raise FedgeError(f"'{key}' must be {kind.__name__}, got {value!r}", f"fix the type of '{key}'")
    return kind(value)
