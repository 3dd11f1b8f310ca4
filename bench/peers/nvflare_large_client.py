"""FLARE client script for ``bench/peers/nvflare_large.py``: add the site's constant to each tensor.

Site ``site-K`` adds ``K`` to every tensor and reports ``K`` as its FedAvg weight
(``NUM_STEPS_CURRENT_ROUND``), the twin of ``bench/large_app.py``'s client.
"""

import numpy as np
import nvflare.client as flare


def main() -> None:
    flare.init()
    node = int(flare.get_site_name().rsplit("-", 1)[1])
    while flare.is_running():
        model = flare.receive()
        params = model.params
        out = {}
        for name in list(params.keys()):
            out[name] = params.pop(name) + np.float32(node)
        flare.send(flare.FLModel(params=out, meta={"NUM_STEPS_CURRENT_ROUND": node}))
        del out, model, params


if __name__ == "__main__":
    main()
