"""The study tests' small trained models: images whose class is their brightest quadrant, a
short training run, a :class:`~qexport.study.Study` over them, and seed 000's loop on them."""

from __future__ import annotations

from typing import Any

import torch
from seed_loop import seed_greedy, seed_sensitivity  # type: ignore[import-not-found]
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from qexport import study
from qexport.api import Loaded
from qexport.frontend.inputs import Inputs
from qexport.frontend.models.network import quantized_convs


def quadrants(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose class (0..3) is the brightest quadrant, normalised as the course's loader does;
    little noise, so no dithering."""
    g = torch.Generator().manual_seed(seed)
    levels = torch.rand(count, 4, generator=g)
    images = torch.zeros(count, 3, 32, 32)
    for q in range(4):
        r, c = divmod(q, 2)
        images[:, :, r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16] = levels[:, q].view(count, 1, 1, 1)
    images += 0.02 * torch.randn(count, 3, 32, 32, generator=g)
    return (images - 0.5) / 0.25, levels.argmax(1)


def trained_on_quadrants(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Train ``model`` for 150 Adam steps at its bits; return 512 test images and their labels."""
    with torch.no_grad():
        for _, m in quantized_convs(model):
            m.act_alpha.fill_(2.0)  # BatchNorm'd activations, not the course's initial 8
    train_x, train_y = quadrants(2048, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(150):
        pick = torch.randint(0, 2048, (32,))
        loss = nn.functional.cross_entropy(model(train_x[pick]), train_y[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    test_x, test_y = quadrants(512, 2)
    with torch.no_grad():
        model(test_x[:1])  # refresh weight_q, so a saved checkpoint is consistent
    return test_x, test_y


def quadrant_study(model: Any, images: torch.Tensor, labels: torch.Tensor, name: str) -> study.Study:
    """A Study of ``model`` (with its ``arch``) on the quadrant images, as if from checkpoint ``name``."""
    inputs = Inputs(images, labels, {"input": "quadrants"}, tuple(range(images.shape[0])))
    loaded = Loaded(model, model.arch, inputs, {"checkpoint": name}, None)
    return study.Study(loaded, images, labels, "quadrants", None)


def seed_run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> dict[str, Any]:
    """Seed 000's loop with epsilon halfway between the smallest and largest drop."""
    loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=False)
    acc_all4, loss_all4, ranked = seed_sensitivity(model, loader)
    drops = [r["acc_drop"] for r in ranked]
    assert drops[-1] - drops[0] >= 1.0, f"2-bit activations barely matter: {drops}"
    epsilon = round((drops[0] + drops[-1]) / 2, 2)
    decisions, precisions, final = seed_greedy(model, loader, acc_all4, ranked, epsilon)
    return {
        "acc": acc_all4,
        "loss": loss_all4,
        "ranked": ranked,
        "epsilon": epsilon,
        "decisions": decisions,
        "precisions": precisions,
        "final": final,
    }
