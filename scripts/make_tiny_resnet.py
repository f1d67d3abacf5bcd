"""Write vectors/tiny_resnet.pth.tar: a small ResNet-CIFAR course checkpoint that is not a built-in.

One ``BasicBlock`` a stage, stage widths (8, 16, 48) (a published variant's), a float stem: so
``layer1.0.conv1`` is an 8 -> 8 conv at 32x32 and ``layer2.0.downsample.0`` a 1x1, stride-2 one.
Its architecture is inferred from the state dict when it is loaded. The weights are the demo's
seeded, calibrated and untrained ones, saved as the course's ResNet checkpoints are:
{'epoch', 'state_dict', 'best_prec', 'optimizer'}, no 'module.' prefix, stored weight_q.

    python scripts/make_tiny_resnet.py [vectors/tiny_resnet.pth.tar]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from qexport.frontend.demo import demo_model
from qexport.frontend.inputs import load_demo
from qexport.frontend.models.resnet import ResNetArch

TINY_RESNET = ResNetArch("tiny_resnet", blocks=(1, 1, 1), widths=(8, 16, 48))


def main(out: Path) -> None:
    model = demo_model(TINY_RESNET)
    with torch.no_grad():
        model(load_demo("0:2").images)  # refresh weight_q as the course's validate() does
    torch.save({"epoch": 1, "state_dict": model.state_dict(), "best_prec": 10.0, "optimizer": {}}, out)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "vectors/tiny_resnet.pth.tar"))
