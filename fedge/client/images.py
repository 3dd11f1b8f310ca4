"""An image folder as a torch ``Dataset``: one sub-folder per class, PNG/JPEG read with Pillow.

Devices often hold their data as image files (a camera's captures sorted by label). Loading them
all into memory would bound a device's data by its RAM, so only the file list is kept and each
image is read, converted to the task's channels and size and scaled when a batch asks for it.
Sorted sub-folder names are the class indices, as in torchvision's ``ImageFolder`` (not a
dependency of fedge, hence this small reader).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

from fedge.errors import FedgeError

if TYPE_CHECKING:
    from fedge.tasks import Task

SUFFIXES = (".png", ".jpg", ".jpeg")


class ImageFolder(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """``root/<class>/*.png|jpg`` as ``(image, class index)`` samples shaped for ``task``."""

    def __init__(self, root: Path, task: Task) -> None:
        if len(task.input_shape) != 3 or task.input_shape[0] not in (1, 3):
            raise FedgeError(
                f"{root} is an image folder but task '{task.name}' takes input {task.input_shape}",
                "image tasks take (channels, height, width) input with 1 or 3 channels",
            )
        self.root, self.task = root, task
        self.classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        if len(self.classes) > task.num_classes:
            raise FedgeError(
                f"{root} has {len(self.classes)} class folders but task '{task.name}' has "
                f"{task.num_classes} classes",
                "keep one sub-folder per class of the task",
            )
        self.samples = [
            (path, label)
            for label, name in enumerate(self.classes)
            for path in sorted((root / name).iterdir())
            if path.suffix.lower() in SUFFIXES
        ]
        if not self.samples:
            raise FedgeError(
                f"{root} holds no images in class sub-folders",
                "put PNG or JPEG files in one sub-folder per class, e.g. data/cat/1.png, data/dog/2.png",
            )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image, UnidentifiedImageError

        path, label = self.samples[index]
        channels, height, width = self.task.input_shape
        try:
            with Image.open(path) as img:
                pixels = img.convert("L" if channels == 1 else "RGB").resize((width, height))
                raw = np.asarray(pixels, dtype=np.float32)
        except (OSError, UnidentifiedImageError) as exc:
            raise FedgeError(f"cannot read image {path}: {exc}", "remove or replace the file") from None
        raw = raw[None] if channels == 1 else raw.transpose(2, 0, 1)
        return torch.from_numpy(self.task.prepare(raw)[0]), torch.tensor(label, dtype=torch.int64)
