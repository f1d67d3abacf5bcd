"""Write vectors/tiny_vgg.pth.tar: a small VGG-style course checkpoint that is not a built-in model.

Its architecture (4 QuantConv2d, one without BatchNorm feeding the next conv through a ReLU) is
inferred from the state dict when it is loaded. The weights are the demo's seeded, calibrated and
untrained ones, saved in the course format: {'epoch', 'state_dict', 'best_prec', 'optimizer'}
with DataParallel 'module.' prefixes and stored weight_q.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from qexport.frontend.demo import demo_model
from qexport.frontend.inputs import load_demo
from qexport.frontend.models.vgg import _from_cfg

TINY_CFG: list[int | str] = [8, "M", 16, "S8", 16, "M", "M", "M", "M"]


def main(out: Path) -> None:
    arch = _from_cfg("tiny_vgg", TINY_CFG)
    model = demo_model(arch)
    with torch.no_grad():
        model(load_demo("0:2").images)  # refresh weight_q as the course's validate() does
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": 1, "state_dict": state, "best_prec": 10.0, "optimizer": {}}, out)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "vectors/tiny_vgg.pth.tar"))
