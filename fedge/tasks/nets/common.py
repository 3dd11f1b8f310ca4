"""What both edge networks share: how their stems adapt to small images, and how batch norm federates.

Batch-norm running statistics are aggregated with the weights, not kept local. The global
model is what the server evaluates centrally and what the export ships to devices that never
trained; with local statistics (FedBN) it would carry its initial mean 0 / variance 1 and
classify at chance once put in eval mode. The weighted mean of the clients' running means and
variances is the population estimate the global model needs (exact for the means, and for IID
clients the variances too; on skewed data it is what FedAvg does with every other parameter).

``num_batches_tracked`` travels too (it is part of the ``state_dict`` every fedge task sends),
but averaging a counter gives a mean count, not a count: with ``momentum=None`` (a cumulative
average whose step is ``1/num_batches_tracked``) the averaged counter would silently change
every client's statistics. So every batch norm here has a fixed momentum, which makes the
counter unread: its value, averaged or not, never touches a computation.

That momentum is 0.1 (PyTorch's default) instead of torchvision's 0.01 for MobileNetV3: a
federated round is a few dozen local steps, and at 0.01 the running statistics would still be
half their initial values after 70 steps — the global model would be evaluated with statistics
that describe no data it has seen.
"""

from __future__ import annotations

BN_MOMENTUM = 0.1
IMAGENET_SIDE = 64


def stem_stride(side: int) -> int:
    """2 (the papers' stem) for images of at least 64 pixels a side, else 1.

    Both networks downsample by 32 for 224-pixel ImageNet input; a 28-pixel digit would reach
    the last stage as a single pixel after the first few blocks. Keeping full resolution in the
    stem (as CIFAR-sized adaptations do) leaves later stages a few pixels to work with.
    """
    return 2 if side >= IMAGENET_SIDE else 1
