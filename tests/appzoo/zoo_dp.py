"""Client-side differential privacy: ``fixedclipping_mod`` on the client, Flower's DP wrapper.

After Flower's examples/fl-dp-sa: ``DifferentialPrivacyClientSideFixedClipping`` around FedAvg
(noise multiplier 0 here, so both engines must agree exactly; clipping still bounds updates).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.client import NumPyClient
from flwr.client.mod import fixedclipping_mod
from flwr.clientapp import ClientApp
from flwr.common import Context, ndarrays_to_parameters
from flwr.server import ServerApp, ServerAppComponents, ServerConfig
from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg
from zoo_data import mse, partition, save_result, sgd

CLIP = 0.5


class RegressionClient(NumPyClient):
    def __init__(self, partition_id: int) -> None:
        self.x, self.y = partition(partition_id)

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
        return [sgd(parameters[0], self.x, self.y)], len(self.y), {}

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
        return mse(parameters[0], self.x, self.y), len(self.y), {}


def client_fn(context: Context) -> Any:
    return RegressionClient(int(context.node_config["partition-id"])).to_client()


client_app = ClientApp(client_fn=client_fn, mods=[fixedclipping_mod])


def server_fn(context: Context) -> ServerAppComponents:
    models: dict[int, list[float]] = {}

    def central(server_round: int, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
        models[server_round] = parameters[0].tolist()
        save_result(context.run_config, {"models": models, "clip": CLIP})
        return 0.0, {}

    fedavg = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=3,
        min_available_clients=3,
        initial_parameters=ndarrays_to_parameters([np.zeros(4)]),
        evaluate_fn=central,
    )
    strategy = DifferentialPrivacyClientSideFixedClipping(
        fedavg, noise_multiplier=0.0, clipping_norm=CLIP, num_sampled_clients=3
    )
    return ServerAppComponents(
        strategy=strategy, config=ServerConfig(num_rounds=int(context.run_config["num-server-rounds"]))
    )


server_app = ServerApp(server_fn=server_fn)
