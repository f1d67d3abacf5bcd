"""Seed 000's sensitivity + greedy loop against ``qexport.study.search`` on the demo model.

Both run on the same demo images (labelled with the 4-bit model's own predictions) and must make
the same decisions with the same accuracies; the script checks that, then prints both times.
Not collected by pytest (bench/ lies outside testpaths).

    python bench/bench_search.py                      # ~2000 demo images, VGG16_quant_gradual
    python bench/bench_search.py --images 512 --model VGG16_quant --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from qexport import study
from qexport.api import Loaded
from qexport.frontend.demo import DEMO_LABEL, demo_images, demo_model
from qexport.frontend.inputs import Inputs, normalise_uint8
from qexport.frontend.models.quant import QuantConv2d
from qexport.frontend.models.vgg import DEFAULT_MODEL, builtin_arch

# the notebook's loop, transcribed once for the tests and this benchmark
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from seed_loop import seed_greedy, seed_sensitivity  # type: ignore[import-not-found]  # noqa: E402


def seed_loop(model: nn.Module, loader: DataLoader[Any], epsilon: float) -> dict[str, Any]:
    """The notebook's cells 5, 6 and 10 (tests/seed_loop.py): baseline, sensitivity, greedy search."""
    acc_all4, _, ranked = seed_sensitivity(model, loader)
    decisions, precisions, final = seed_greedy(model, loader, acc_all4, ranked, epsilon)
    return {
        "ranked": [(r["layer"], r["acc"]) for r in ranked],
        "decisions": [(idx, accepted, acc) for idx, accepted, acc, _, _ in decisions],
        "precisions": precisions,
        "final": final,
    }


class _MacCounter:
    """Multiply-accumulates done by the QuantConv2d layers: a machine-independent measure of work."""

    def __init__(self, model: nn.Module) -> None:
        self.macs = 0
        for m in model.modules():
            if isinstance(m, QuantConv2d):
                m.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, _args: Any, output: torch.Tensor) -> None:
        assert isinstance(module, QuantConv2d)
        k = module.kernel_size[0] * module.kernel_size[1]
        self.macs += output.numel() * module.in_channels * k

    def take(self) -> int:
        macs, self.macs = self.macs, 0
        return macs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=2000, help="demo images (default 2000)")
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"built-in architecture (default {DEFAULT_MODEL})"
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--epsilon",
        type=float,
        nargs="+",
        default=[1.0, 40.0],
        help="one run each (default 1 and 40: the untrained demo drops 20-70%% a layer, so 1 rejects "
        "every layer, and greedy's steps repeat the sensitivity runs; 40 accepts some)",
    )
    parser.add_argument("--cache-mb", type=int, default=study.DEFAULT_CACHE_MB)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    arch = builtin_arch(args.model)
    model = demo_model(arch)
    images = normalise_uint8(demo_images(args.images))
    labels = study.pseudo_labels(model, images, args.batch_size)
    inputs = Inputs(images, labels, {"demo": DEMO_LABEL}, tuple(range(args.images)))
    data = study.Study(
        Loaded(model, arch, inputs, {"demo": True}, DEMO_LABEL), images, labels, "pseudo", None
    )
    loader = DataLoader(TensorDataset(images, labels), batch_size=args.batch_size, shuffle=False)
    convs = len(arch.qconv_indices())
    counter = _MacCounter(model)
    print(
        f"{arch.name} (demo, untrained), {args.images} images, batch {args.batch_size}, {convs} convs, "
        f"torch threads {torch.get_num_threads()}"
    )
    failed = False
    for epsilon in args.epsilon:
        print(f"\n-- epsilon {epsilon}")
        start, cpu = time.perf_counter(), time.process_time()
        seed = seed_loop(model, loader, epsilon)
        seed_time, seed_cpu = time.perf_counter() - start, time.process_time() - cpu
        seed_macs = counter.take()
        print(
            f"seed loop  : {seed_time:8.1f} s wall {seed_cpu:8.1f} s cpu  {seed_macs / 1e9:8.1f} GMAC  "
            f"({2 * convs + 1} full evaluations)"
        )
        start, cpu = time.perf_counter(), time.process_time()
        ours = study.search(data, epsilon, batch_size=args.batch_size, cache_bytes=args.cache_mb << 20)
        our_time, our_cpu = time.perf_counter() - start, time.process_time() - cpu
        our_macs = counter.take()
        print(
            f"qexport    : {our_time:8.1f} s wall {our_cpu:8.1f} s cpu  {our_macs / 1e9:8.1f} GMAC  "
            f"(prefix cache, {args.cache_mb} MB)"
        )
        same = (
            [(r.conv_number, r.accuracy) for r in ours.sensitivity.ranked] == seed["ranked"]
            and [(s.conv_number, s.accepted, s.result.accuracy) for s in ours.steps] == seed["decisions"]
            and [ours.act_bits()[c.name] for c in ours.convs] == seed["precisions"]
            and ours.result.accuracy == seed["final"]
        )
        failed |= not same
        accepted = sum(s.accepted for s in ours.steps)
        print(f"identical  : {same}  ({accepted} ACCEPT, {convs - accepted} REJECT)")
        print(
            f"speed-up   : {seed_time / our_time:8.2f}x wall {seed_cpu / our_cpu:8.2f}x cpu  "
            f"{seed_macs / our_macs:8.2f}x fewer conv MACs"
        )
    if failed:
        raise SystemExit("results differ from the seed loop")


if __name__ == "__main__":
    main()
