"""A FLARE model persistor for ``bench/peers/nvflare_large.py``: zeros in, a summary out.

``load_model`` builds the initial model (``tensors`` float32 zero tensors of ``model_mb`` MB in
all, so no giant JSON list goes into the job config); ``save_model`` writes, per tensor, the
first/min/max value and the time of the call to ``result_path`` (JSON), which the driver checks
against the exact weighted mean. Each save marks the end of a round.
"""

import json
import os
import time

import numpy as np
from nvflare.app_common.abstract.model import ModelLearnable, ModelLearnableKey, make_model_learnable
from nvflare.app_common.abstract.model_persistor import ModelPersistor


class LargeModelPersistor(ModelPersistor):
    def __init__(self, model_mb: float = 1.0, tensors: int = 8, result_path: str = ""):
        super().__init__()
        self.model_mb = model_mb
        self.tensors = tensors
        self.result_path = result_path
        self.saves: list[float] = []

    def load_model(self, fl_ctx) -> ModelLearnable:
        total = int(self.model_mb * 1_000_000) // 4
        sizes = [total // self.tensors + (1 if i < total % self.tensors else 0) for i in range(self.tensors)]
        weights = {f"w{i}": np.zeros(size, np.float32) for i, size in enumerate(sizes)}
        self.loaded = time.time()
        return make_model_learnable(weights=weights, meta_props={})

    def save_model(self, model_learnable: ModelLearnable, fl_ctx) -> None:
        self.saves.append(time.time())
        final = {}
        for name, values in model_learnable[ModelLearnableKey.WEIGHTS].items():
            values = np.asarray(values)
            final[name] = {
                "first": float(values.flat[0]),
                "min": float(values.min()),
                "max": float(values.max()),
                "dtype": str(values.dtype),
            }
        if self.result_path:
            tmp = self.result_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"loaded": self.loaded, "saves": self.saves, "final": final}, f)
            os.replace(tmp, self.result_path)
