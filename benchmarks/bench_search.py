"""Seed 000's sensitivity + greedy loop against ``qexport.study.search`` on the demo model.

Both run on the same demo images (labelled with the 4-bit model's own predictions) and must make
the same decisions with the same accuracies; the script checks that, then prints both times.
Not collected by pytest (benchmarks/ lies outside testpaths).

    python benchmarks/bench_search.py                      # ~2000 demo images, VGG16_quant_gradual
    python benchmarks/bench_search.py --images 512 --model VGG16_quant --threads 1
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from qexport import study
from qexport.api import Loaded
from qexport.demo import DEMO_LABEL, demo_images, demo_model
from qexport.inputs import Inputs, normalise_uint8
from qexport.model import DEFAULT_MODEL, builtin_arch
from qexport.quant_layer import QuantConv2d


def _seed_evaluate(model: nn.Module, loader: DataLoader[Any], criterion: nn.Module) -> tuple[float, float]:
    with torch.no_grad():
        model.eval()
        total, correct = 0, 0
        loss_sum = 0.0
        for x, y in loader:
            out = model(x)
            loss = criterion(out, y)
            loss_sum += loss.item() * x.size(0)
            _, pred = out.max(1)
            correct += pred.eq(y).sum().item()
            total += y.size(0)
    return 100.0 * correct / total, loss_sum / total


def seed_loop(model: nn.Module, loader: DataLoader[Any], epsilon: float) -> dict[str, Any]:
    """The notebook's cells 5, 6 and 10: baseline, per-layer sensitivity, greedy search."""
    criterion = nn.CrossEntropyLoss()
    qconvs = [m for m in model.modules() if isinstance(m, QuantConv2d)]

    def set_all_act_bits(bit: int) -> None:
        for m in qconvs:
            m.act_bit = bit

    set_all_act_bits(4)
    acc_all4, _ = _seed_evaluate(model, loader, criterion)
    results = []
    for idx in range(len(qconvs)):
        set_all_act_bits(4)
        qconvs[idx].act_bit = 2
        acc, _ = _seed_evaluate(model, loader, criterion)
        results.append({"layer": idx, "acc": acc, "acc_drop": acc_all4 - acc})
    ranked = sorted(results, key=lambda x: x["acc_drop"])
    precisions = [4] * len(qconvs)
    set_all_act_bits(4)
    current_acc = acc_all4
    decisions = []
    for r in ranked:
        idx = r["layer"]
        qconvs[idx].act_bit = 2
        precisions[idx] = 2
        acc, _ = _seed_evaluate(model, loader, criterion)
        if acc_all4 - acc <= epsilon:
            current_acc = acc
            decisions.append((idx, True, acc))
        else:
            qconvs[idx].act_bit = 4
            precisions[idx] = 4
            decisions.append((idx, False, acc))
    set_all_act_bits(4)
    return {
        "ranked": [(r["layer"], r["acc"]) for r in ranked],
        "decisions": decisions,
        "precisions": precisions,
        "final": current_acc,
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
            and [ours.act_bits()[c.layer] for c in ours.convs] == seed["precisions"]
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
