"""A low-rank adapter (LoRA, Hu et al., 2021) on a linear layer: ``y = W x + (alpha/r) · B A x``.

``W`` (and its bias) stay frozen; only ``A`` (r × in, random) and ``B`` (out × r, zero, so the
adapted model starts equal to the base) train. ``peft`` would do the same but is not installed
here, and a 20-line layer keeps the example free of another dependency.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable rank-``rank`` update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # peft's init
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scale
