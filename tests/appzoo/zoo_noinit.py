"""No initial parameters: the legacy strategy asks a client for them (``get_parameters``).

Flower's compat layer then sends an instruction with a placeholder array before round 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp
from flwr.common import Context
from flwr.server import ServerApp, ServerAppComponents, ServerConfig
from flwr.server.strategy import FedAvg
from zoo_data import mse, partition, save_result, sgd


class RegressionClient(NumPyClient):
    def __init__(self, partition_id: int) -> None:
        self.x, self.y = partition(partition_id)

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        return [np.full(4, 0.25)]

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
        return [sgd(parameters[0], self.x, self.y)], len(self.y), {}

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
        return mse(parameters[0], self.x, self.y), len(self.y), {}


def client_fn(context: Context) -> Any:
    return RegressionClient(int(context.node_config["partition-id"])).to_client()


client_app = ClientApp(client_fn=client_fn)


def server_fn(context: Context) -> ServerAppComponents:
    models: dict[int, list[float]] = {}

    def central(server_round: int, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
        models[server_round] = parameters[0].tolist()
        save_result(context.run_config, {"models": models})
        return 0.0, {}

    strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=1.0,
        min_fit_clients=3,
        min_evaluate_clients=3,
        min_available_clients=3,
        evaluate_fn=central,
    )
    return ServerAppComponents(
        strategy=strategy, config=ServerConfig(num_rounds=int(context.run_config["num-server-rounds"]))
    )


server_app = ServerApp(server_fn=server_fn)
