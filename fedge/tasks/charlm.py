"""Built-in ``charlm`` task: a small character-level transformer language model, fine-tuned with LoRA.

The example of "only what trains travels". The model is built from :class:`LMConfig` (no
download): token and position embeddings, pre-norm transformer blocks, a linear head over the
96-character vocabulary. Its base weights come from a fixed seed — standing in for the
pretrained checkpoint every device already holds — and stay frozen; low-rank adapters
(:mod:`fedge.tasks.lora`) on every linear layer are the only trainable parameters, about 10% of
the model here (far less on a real language model). ``Task.trainable`` marks them, so fedge
sends and aggregates only the adapters and checks the frozen base by hash.

The text is what the device has: the docstrings of a fixed list of Python standard-library
modules, cut into 32-character windows; each sample's label is the character that follows its
window (next-character prediction, the language-modelling objective at the window's last
position), so fedge's classification loop, evaluation, partitioning and export apply unchanged.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedge.tasks.base import Arrays, Task
from fedge.tasks.lora import LoRALinear

VOCAB = 96  # newline, then printable ASCII 32..126
TEXT_MODULES = ("json", "csv", "argparse", "collections", "functools", "itertools", "pathlib", "textwrap")
MAX_CHARS = 16_000
STRIDE = 4


@dataclass(frozen=True)
class LMConfig:
    """Model size and adapter settings (the whole definition: nothing else is downloaded or read)."""

    context: int = 32
    width: int = 48
    heads: int = 4
    layers: int = 2
    rank: int = 4
    alpha: float = 8.0
    base_seed: int = 1234


CONFIG = LMConfig()


class Block(nn.Module):
    """Pre-norm transformer block: self-attention then a 4× MLP, both residual."""

    def __init__(self, c: LMConfig) -> None:
        super().__init__()
        self.heads = c.heads
        self.norm1 = nn.LayerNorm(c.width)
        self.query = nn.Linear(c.width, c.width)
        self.key = nn.Linear(c.width, c.width)
        self.value = nn.Linear(c.width, c.width)
        self.out = nn.Linear(c.width, c.width)
        self.norm2 = nn.LayerNorm(c.width)
        self.up = nn.Linear(c.width, 4 * c.width)
        self.down = nn.Linear(4 * c.width, c.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        h = self.norm1(x)

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.reshape(n, t, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.query(h)), split(self.key(h)), split(self.value(h))
        attn = torch.softmax(q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5, dim=-1)
        x = x + self.out((attn @ v).transpose(1, 2).reshape(n, t, d))
        return x + self.down(torch.relu(self.up(self.norm2(x))))


class CharLM(nn.Module):
    """Logits of the character following each window of ``context`` character ids."""

    def __init__(self, c: LMConfig) -> None:
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, c.width)
        self.positions = nn.Parameter(torch.randn(c.context, c.width) * 0.02)
        self.blocks = nn.Sequential(*[Block(c) for _ in range(c.layers)])
        self.norm = nn.LayerNorm(c.width)
        self.head = nn.Linear(c.width, VOCAB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.tokens(x.long()) + self.positions)
        return self.head(self.norm(h[:, -1]))


def build_model(c: LMConfig = CONFIG) -> nn.Module:
    """The base (seeded by ``c.base_seed``, frozen) with LoRA adapters on every linear layer."""
    with torch.random.fork_rng():
        torch.manual_seed(c.base_seed)
        model = CharLM(c)
        model.requires_grad_(False)
        for block in model.blocks:
            for name in ("query", "key", "value", "out", "up", "down"):
                setattr(block, name, LoRALinear(getattr(block, name), c.rank, c.alpha))
        model.register_module("head", LoRALinear(model.head, c.rank, c.alpha))
    return model


def encode(text: str) -> np.ndarray:
    """Characters → ids: newline 0, printable ASCII 1..95, anything else a space."""
    codes = np.frombuffer(text.encode("ascii", "replace"), dtype=np.uint8).astype(np.int64)
    ids = np.where((codes >= 32) & (codes <= 126), codes - 31, 1)
    return np.where(codes == 10, 0, ids)


def corpus() -> str:
    """The device's text: the docstrings of :data:`TEXT_MODULES`, at most :data:`MAX_CHARS`."""
    docs = [inspect.getdoc(importlib.import_module(m)) or "" for m in TEXT_MODULES]
    return "\n\n".join(docs)[:MAX_CHARS]


def windows(ids: np.ndarray, context: int = CONFIG.context) -> Arrays:
    """Every ``STRIDE``-th window of ``context`` ids and the id that follows it."""
    starts = np.arange(0, len(ids) - context, STRIDE)
    x = np.stack([ids[s : s + context] for s in starts]).astype(np.float32)
    return x, ids[starts + context].astype(np.int64)


def load_data(seed: int) -> tuple[Arrays, Arrays]:
    """``seed -> (train, test)``: 80/20 split of the windows (stratified where a class allows)."""
    x, y = windows(encode(corpus()))
    from sklearn.model_selection import train_test_split

    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=seed)
    return (x_tr, y_tr), (x_te, y_te)


TASK = Task(
    name="charlm",
    build_model=build_model,
    load_data=load_data,
    input_shape=(CONFIG.context,),
    num_classes=VOCAB,
    input_name="chars",
    trainable=("*.lora_a", "*.lora_b"),
)
