"""Tests for asr/modules/dropout.py: the cheap CPU dropout drops at rate p, keeps the mean, is
repeatable from torch's seed and draws every element independently of its neighbours."""

from __future__ import annotations

import pytest
import torch

from asr.modules.dropout import Dropout, dropout


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_drop_rate_and_mean_match_p_at_every_position_of_a_random_word(p):
    torch.manual_seed(0)
    x = torch.ones(400_000)
    y = dropout(x, p, training=True)
    dropped = (y == 0).float().view(-1, 4)  # each 64-bit draw feeds four neighbouring elements
    for position in range(4):
        assert dropped[:, position].mean().item() == pytest.approx(p, abs=0.005)
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)
    kept = y[y != 0]
    assert torch.allclose(kept, torch.full_like(kept, kept[0].item()))
    assert kept[0].item() == pytest.approx(1 / (1 - p), rel=1e-3)


def test_neighbouring_elements_are_dropped_independently():
    torch.manual_seed(1)
    d = (dropout(torch.ones(400_000), 0.5, training=True) == 0).float()
    both = (d[:-1] * d[1:]).mean().item()
    assert both == pytest.approx(0.25, abs=0.005)


def test_same_seed_same_mask_and_eval_mode_is_identity():
    layer = Dropout(0.2)
    x = torch.randn(3, 50, 16)
    torch.manual_seed(7)
    a = layer(x)
    torch.manual_seed(7)
    assert torch.equal(a, layer(x))
    assert not torch.equal(a, layer(x))  # the generator moved on
    layer.eval()
    assert layer(x) is x


def test_gradient_flows_through_kept_elements_only():
    torch.manual_seed(3)
    x = torch.ones(1000, requires_grad=True)
    y = dropout(x, 0.25, training=True)
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())
