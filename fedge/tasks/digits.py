"""Built-in ``digits`` task: scikit-learn's 1,797 real 8×8 handwritten digits.

The dataset ships inside scikit-learn (no download), so demos and tests run offline and in
seconds. Pixels are 4-bit (0..16) and scaled to [0, 1].
"""

from __future__ import annotations

import numpy as np
from torch import nn

from fedge.tasks.base import Arrays, Task, he_init

INPUT_SHAPE = (1, 8, 8)
INPUT_SCALE = 16.0


def build_model() -> nn.Module:
    """A ~10k-parameter CNN: two 3×3 convolutions, one 2×2 max-pool, a linear head; He-initialised."""
    return he_init(
        nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 10),
        )
    )


def stratified_split(
    x: np.ndarray, y: np.ndarray, seed: int, test_fraction: float = 0.2
) -> tuple[Arrays, Arrays]:
    """Fixed stratified train/test split: same seed, same split, every class in both parts."""
    from sklearn.model_selection import train_test_split

    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, stratify=y, random_state=seed)
    return (x_tr, y_tr.astype(np.int64)), (x_te, y_te.astype(np.int64))


def load_data(seed: int) -> tuple[Arrays, Arrays]:
    """``seed -> (train, test)``: 80/20 stratified split of the prepared images."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return stratified_split(TASK.prepare(bunch.data), bunch.target, seed)


TASK = Task(
    name="digits",
    build_model=build_model,
    load_data=load_data,
    input_shape=INPUT_SHAPE,
    num_classes=10,
    input_scale=INPUT_SCALE,
)
