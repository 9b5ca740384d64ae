"""The Conformer feed-forward module (Gulati et al. 2020, section 2.3), used as a macaron pair."""

from __future__ import annotations

import torch
from torch import nn

from asr.modules.dropout import Dropout


def make_activation(name: str) -> nn.Module:
    """ "swish" (SiLU, the paper's choice) or "leaky_relu"."""
    if name == "swish":
        return nn.SiLU()
    if name == "leaky_relu":
        return nn.LeakyReLU(0.01)
    raise ValueError(f"unknown activation {name!r}; choose 'swish' or 'leaky_relu'")


class FeedForward(nn.Module):
    """LayerNorm -> Linear(D, ff_mult*D) -> activation -> dropout -> Linear(., D) -> dropout.

    Returns the residual branch only; the block adds it with weight 1/2.
    """

    def __init__(
        self, d_model: int, ff_mult: int = 4, activation: str = "swish", dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(d_model),
            nn.Linear(d_model, ff_mult * d_model),
            make_activation(activation),
            Dropout(dropout),
            nn.Linear(ff_mult * d_model, d_model),
            Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, D) -> (B, T, D)."""
        return self.net(x)
