"""``qexport infer --from``: run the integer network from a vector set alone (no torch, no model).

What the set must hold (a ``dump --all --sfu`` of any profile; a tiled set's tensors are put back
together from their tile files by :mod:`qexport.verify.tiles`): every quantized conv of the network,
the first one's ``input`` file, each conv's ``weight``, every conv but the last its ``threshold``
and ``direction`` files with ``next`` / ``between``, and the manifest's ``classifier`` (the float
end's ops and float32 arrays). Per batch of images: the first conv's ``x_int`` from its ``input``
file, each conv's exact psums (:func:`qexport.ir.numpy_conv.numpy_conv`), its thresholds, the
max-pool of ``between``, the next conv ... then the float end on the last conv's dequantised psums.

Where the set also holds a conv's ``input`` (a later conv's: the float model's ``x_int``, or the
integer network's own with ``--chain``) or ``requant``, the run counts the values that differ from
it; on a ``--chain`` set both counts are 0.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qexport.errors import InputError
from qexport.ir.fixed_point import Affine, FixedPointWidths, Requant, block_end, check_skip, rshift_up
from qexport.ir.numpy_conv import numpy_conv
from qexport.ir.sfu import Thresholds, max_pool, scale
from qexport.verify.decode import decode_file
from qexport.verify.tiles import assemble, is_tiled
from qexport.writer.manifest import (
    MANIFEST_NAME,
    ClassifierEntry,
    FileEntry,
    FixedPointEntry,
    LayerEntry,
    Manifest,
    loads,
)


@dataclass
class SetLayer:
    """One conv of a set's run: how many ``x_int`` values it made and how many differ from the set's."""

    name: str
    label: str
    next: str | None
    between: tuple[str, ...]
    values: int = 0
    differ_input: int | None = None
    """Of this conv's ``x_int`` from the run, how many differ from the set's ``input`` file."""
    differ_requant: int | None = None
    """Of the next conv's ``x_int`` from the run, how many differ from the set's ``requant`` file."""
    differ_skip: int | None = None
    """A ResNet identity block end: of the shortcut the run carried, how many differ from ``skip``."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "next": self.next,
            "between": list(self.between),
            "values": self.values,
            "differ_input": self.differ_input,
            "differ_requant": self.differ_requant,
        } | ({} if self.differ_skip is None else {"differ_skip": self.differ_skip})


@dataclass
class SetInferReport:
    """The integer network run from a set: per conv, and the top-1 class of every image."""

    model: str
    layers: list[SetLayer]
    predictions: list[int] = field(default_factory=list)
    x_int: dict[str, np.ndarray] = field(default_factory=dict)
    """With ``keep``: each conv's ``x_int`` (N, C, H, W) as the run made it, by module path."""

    @property
    def images(self) -> int:
        return len(self.predictions)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "images": self.images,
            "layers": [layer.as_dict() for layer in self.layers],
            "predictions": list(self.predictions),
        }


@dataclass(frozen=True)
class _Conv:
    layer: LayerEntry
    w_int: np.ndarray  # (OC, IC, KH, KW)
    s: float  # x_delta * w_delta, the psum's float value
    psum_limit: int  # |psum| the set's psum lanes hold (the thresholds are exact up to it)
    rule: Thresholds | None
    pool: int | None
    x_set: np.ndarray | None  # the set's input (N, C, H, W), if it has one
    requant: np.ndarray | None  # the set's requant (N, C, H', W'), if it has one


def infer_set(folder: Path, batch_size: int = 100, keep: bool = False) -> SetInferReport:
    """Run the network a flat-profile vector set describes, from its files alone (see the module)."""
    manifest = _manifest(folder)
    if any(layer.fixed_point is not None for layer in manifest.layers):
        return _infer_resnet_set(folder, manifest, batch_size, keep)
    convs, x0 = _program(folder, manifest)
    end = manifest.classifier
    if end is None:
        raise InputError(
            f"{folder}: the manifest has no 'classifier' (the float end after {convs[-1].layer.name}); "
            "make the set with `qexport dump --all --sfu` (the last conv with --sfu writes it)"
        )
    arrays = {a.key: _array(folder, a.path, a.sha256, a.shape) for a in end.files}
    report = SetInferReport(
        manifest.model,
        [SetLayer(c.layer.name, str(c.layer.key), c.layer.next, c.layer.between or ()) for c in convs],
    )
    kept: dict[str, list[np.ndarray]] = {c.layer.name: [] for c in convs}
    for start in range(0, x0.shape[0], batch_size):
        x = x0[start : start + batch_size]
        for conv, row in zip(convs, report.layers, strict=True):
            if keep:
                kept[conv.layer.name].append(x)
            row.values += int(x.size)
            if conv.x_set is not None:
                row.differ_input = (row.differ_input or 0) + int(
                    (x != conv.x_set[start : start + batch_size]).sum()
                )
            psum = numpy_conv(x, conv.w_int, conv.layer.stride, conv.layer.padding)
            if conv.rule is None:
                logits = _float_end(psum, conv.s, end, arrays)
                report.predictions.extend(int(p) for p in logits.argmax(1))
                break
            _check_range(psum, conv)
            levels = conv.rule.apply(psum)
            x = levels if conv.pool is None else max_pool(levels, conv.pool)
            if conv.requant is not None:
                row.differ_requant = (row.differ_requant or 0) + int(
                    (x != conv.requant[start : start + batch_size]).sum()
                )
    if keep:
        report.x_int = {name: np.concatenate(parts) for name, parts in kept.items() if parts}
    return report


def _manifest(folder: Path) -> Manifest:
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise InputError(f"{folder} has no {MANIFEST_NAME}; give a vector set folder (qexport dump -o DIR)")
    manifest = loads(path.read_text(encoding="utf-8"), str(path))
    if not manifest.layers:
        raise InputError(f"{path} lists no layer")
    return manifest


def _program(folder: Path, manifest: Manifest) -> tuple[list[_Conv], np.ndarray]:
    """The convs in order from the first, following ``next``, and the first conv's ``x_int``."""
    by_name = {layer.name: layer for layer in manifest.layers}
    consumers = {layer.next for layer in manifest.layers if layer.next is not None}
    firsts = [layer for layer in manifest.layers if layer.name not in consumers]
    first = firsts[0] if firsts else manifest.layers[0]
    if first.conv_number != 0:
        raise InputError(
            f"{folder}: the set starts at layer {first.key} (conv {first.conv_number}), not at the "
            "network's first conv; make the set with every layer (`qexport dump --all --sfu`)"
        )
    convs: list[_Conv] = []
    layer: LayerEntry | None = first
    while layer is not None:
        convs.append(_conv(folder, layer, first=not convs))
        if layer.next is None:
            break
        nxt = by_name.get(layer.next)
        if nxt is None:
            raise InputError(
                f"{folder}: layer {layer.key}'s SFU feeds {layer.next}, which the set does not hold; "
                "make the set with every layer (`qexport dump --all --sfu`)"
            )
        layer = nxt
    missing = [layer.key for layer in manifest.layers if layer.name not in {c.layer.name for c in convs}]
    if missing:
        raise InputError(
            f"{folder}: layer {convs[-1].layer.key} has no SFU files (threshold, direction), so the run "
            f"stops there and cannot reach layer {missing[0]}; make the set with `qexport dump --all --sfu`"
        )
    x0 = convs[0].x_set
    if x0 is None:  # pragma: no cover - _conv requires the first conv's input
        raise InputError(f"{folder}: layer {first.key} has no input file")
    return convs, x0


def _file(layer: LayerEntry, tensor: str) -> FileEntry | None:
    return next((f for f in layer.files if f.tensor == tensor), None)


def _need(folder: Path, layer: LayerEntry, tensor: str, why: str) -> FileEntry:
    entry = _file(layer, tensor)
    if entry is None:
        raise InputError(
            f"{folder}: layer {layer.key} has no {tensor} file in the manifest; infer --from needs it "
            f"({why}); make the set with `qexport dump --all --sfu`"
        )
    return entry


def _decoded(folder: Path, entry: FileEntry) -> np.ndarray:
    path = folder / entry.path
    if not path.is_file():
        raise InputError(f"{path} is missing (the manifest lists it); the set is incomplete (re-export it)")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise InputError(
            f"{path} does not match its sha256 in the manifest; the set is damaged (re-export it)"
        )
    return decode_file(path, entry)


def _tensor(folder: Path, layer: LayerEntry, tensor: str) -> np.ndarray:
    """The layer's ``tensor`` in the flat layout's axes (an input without its zero border): its one
    flat file, or its tile files put back together by their placement (:mod:`qexport.verify.tiles`)."""
    entries = [f for f in layer.files if f.tensor == tensor]
    if is_tiled(entries):
        return assemble(layer, tensor, entries, lambda entry: _decoded(folder, entry))
    entry = entries[0]
    x = _decoded(folder, entry)
    if entry.padded and layer.padding:
        x = x[:, layer.padding : -layer.padding, layer.padding : -layer.padding, :]
    return x


def _nchw(folder: Path, layer: LayerEntry, tensor: str) -> np.ndarray:
    """An ``n, h, w, c`` tensor as (N, C, H, W), without the zero border of a padded input."""
    return np.ascontiguousarray(_tensor(folder, layer, tensor).transpose(0, 3, 1, 2))


def _conv(folder: Path, layer: LayerEntry, first: bool) -> _Conv:
    _need(folder, layer, "weight", "the conv's weights")
    w = _tensor(folder, layer, "weight").transpose(0, 3, 1, 2)
    entry = _need(folder, layer, "input", "the first conv's x_int") if first else _file(layer, "input")
    x_set = None if entry is None else _nchw(folder, layer, "input")
    psum = _file(layer, "psum")
    psum_limit = 2 ** (psum.lane_bits - 1) if psum is not None else 2**62
    s = float(scale(layer.act_alpha, layer.act_bit, layer.wgt_alpha, layer.w_bit))
    if layer.next is None:
        return _Conv(layer, np.ascontiguousarray(w), s, psum_limit, None, None, x_set, None)
    _need(folder, layer, "threshold", "the SFU's thresholds")
    _need(folder, layer, "direction", "the SFU's direction")
    t, d = _tensor(folder, layer, "threshold"), _tensor(folder, layer, "direction")
    requant = _file(layer, "requant")
    # a constant channel (direction 0) is written so count(psum >= T) gives it: its level at psum 0
    constant = np.where(d == 0, (t <= 0).sum(1), 0)
    rule = Thresholds(t, d.astype(np.int8), constant, layer.act_bit)
    return _Conv(
        layer,
        np.ascontiguousarray(w),
        s,
        psum_limit,
        rule,
        _pool(folder, layer),
        x_set,
        None if requant is None else _nchw(folder, layer, "requant"),
    )


def _pool(folder: Path, layer: LayerEntry) -> int | None:
    pool = None
    for op in layer.between or ():
        if op.startswith("maxpool") and op[7:].isdigit() and pool is None:
            pool = int(op[7:])
        elif op not in ("batchnorm", "relu"):
            raise InputError(
                f"{folder}: layer {layer.key}'s between names {op!r}; infer --from runs batchnorm, relu "
                "and maxpool<k> (the thresholds hold the first two)"
            )
    return pool


def _check_range(psum: np.ndarray, conv: _Conv) -> None:
    """The thresholds are exact for the psums the set's psum lanes hold; refuse any beyond them."""
    low, high = int(psum.min(initial=0)), int(psum.max(initial=0))
    if low < -conv.psum_limit or high >= conv.psum_limit:
        raise InputError(
            f"layer {conv.layer.key}: the run's psums span [{low}, {high}], beyond the set's psum lanes "
            f"[{-conv.psum_limit}, {conv.psum_limit - 1}] its thresholds are clamped to; make the set "
            "without a narrow --psum-bits"
        )


def _array(folder: Path, relpath: str, sha256: str, shape: tuple[int, ...]) -> np.ndarray:
    path = folder / relpath
    if not path.is_file():
        raise InputError(f"{path} is missing (the manifest's classifier lists it); the set is incomplete")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise InputError(
            f"{path} does not match its sha256 in the manifest; the set is damaged (re-export it)"
        )
    array = np.load(io.BytesIO(data), allow_pickle=False)
    if tuple(array.shape) != tuple(shape):
        raise InputError(f"{path} holds shape {list(array.shape)}, the manifest says {list(shape)}")
    return np.asarray(array, dtype=np.float32)


def _arg(arrays: dict[str, np.ndarray], key: str, optional: bool = False) -> np.ndarray | None:
    if key in arrays:
        return arrays[key]
    if optional:
        return None
    raise InputError(f"the manifest's classifier has no array {key!r}; the set is incomplete (re-export it)")


def _float_end(psum: np.ndarray, s: float, end: ClassifierEntry, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The logits (N, classes): float32 ops, as the model runs them, on ``psum * s``."""
    y = (psum.astype(np.float64) * s).astype(np.float32)
    for op in end.ops:
        if op.op == "batchnorm":
            key = op.module or ""
            gamma, beta, mean, var = (
                _arg(arrays, f"{key}.{p}") for p in ("weight", "bias", "running_mean", "running_var")
            )
            per = (None, slice(None), None, None)
            inv = (np.float32(1.0) / np.sqrt(var + np.float32(op.eps or 0.0))).astype(np.float32)  # type: ignore[operator]
            y = ((y - mean[per]) * (inv * gamma)[per] + beta[per]).astype(np.float32)  # type: ignore[index,operator]
        elif op.op == "relu":
            y = np.maximum(y, np.float32(0.0))
        elif op.op in ("maxpool", "avgpool"):
            k = op.kernel or 1
            n, c, h, w = y.shape
            win = y[:, :, : h // k * k, : w // k * k].reshape(n, c, h // k, k, w // k, k)
            y = win.max(axis=(3, 5)) if op.op == "maxpool" else win.mean(axis=(3, 5), dtype=np.float32)
        elif op.op == "flatten":
            y = y.reshape(y.shape[0], -1)
        else:  # linear
            key = op.module or ""
            weight, bias = _arg(arrays, f"{key}.weight"), _arg(arrays, f"{key}.bias", optional=True)
            y = y @ weight.T  # type: ignore[union-attr]
            if bias is not None:
                y = y + bias
    return np.asarray(y)


# --- ResNets: thresholds inside a block, fixed point at its end -----------------------------------


@dataclass(frozen=True)
class _Stage:
    """One conv of a ResNet set and what its SFU files hold (decoded once)."""

    layer: LayerEntry
    w_int: np.ndarray  # (OC, IC, KH, KW)
    x_set: np.ndarray | None  # the set's input (N, C, H, W), if it has one
    rule: Thresholds | None  # a block's conv1: thresholds to conv2
    requant: np.ndarray | None  # its golden requant (thresholds)
    fold: Affine | None  # a fixed-point SFU's multiplier, shift, bias
    skip: np.ndarray | None  # an identity block end's skip (N, C, H, W)
    golden: dict[str, np.ndarray]  # a block end's requant files by consumer

    @property
    def fixed(self) -> FixedPointEntry | None:
        return self.layer.fixed_point


def _stage(folder: Path, layer: LayerEntry) -> _Stage:
    _need(folder, layer, "weight", "the conv's weights")
    w = _tensor(folder, layer, "weight").transpose(0, 3, 1, 2)
    x_set = None if _file(layer, "input") is None else _nchw(folder, layer, "input")
    fp = layer.fixed_point
    rule = requant = fold = skip = None
    golden: dict[str, np.ndarray] = {}
    if fp is None and layer.next is not None:
        _need(folder, layer, "threshold", "the SFU's thresholds")
        _need(folder, layer, "direction", "the SFU's direction")
        t, d = _tensor(folder, layer, "threshold"), _tensor(folder, layer, "direction")
        rule = Thresholds(t, d.astype(np.int8), np.where(d == 0, (t <= 0).sum(1), 0), layer.act_bit)
        requant = None if _file(layer, "requant") is None else _nchw(folder, layer, "requant")
    elif fp is not None:
        why = "the fixed-point SFU's BatchNorm fold"
        for k in ("multiplier", "shift", "bias"):
            _need(folder, layer, k, why)
        fold = Affine(*(_tensor(folder, layer, k) for k in ("multiplier", "shift", "bias")))
        skip = None if _file(layer, "skip") is None else _nchw(folder, layer, "skip")
        for rq in fp.requant:
            if _file(layer, rq.tensor) is not None:
                golden[rq.consumer] = _nchw(folder, layer, rq.tensor)
    return _Stage(layer, np.ascontiguousarray(w), x_set, rule, requant, fold, skip, golden)


def _resnet_order(folder: Path, stages: list[_Stage]) -> tuple[list[_Stage], dict[str, str]]:
    """The run's order (forward order, a downsample conv just before the block end it adds into)
    and each conv's producer (the conv whose SFU makes its ``x_int``)."""
    producer: dict[str, str] = {}
    for st in stages:
        if st.layer.next is not None and st.fixed is None:
            producer[st.layer.next] = st.layer.name
        for rq in st.fixed.requant if st.fixed is not None else ():
            producer[rq.consumer] = st.layer.name
    shortcuts = {
        st.fixed.add_into: st for st in stages if st.fixed is not None and st.fixed.role == "shortcut"
    }
    order: list[_Stage] = []
    for st in stages:
        if st.fixed is not None and st.fixed.role == "shortcut":
            continue
        if st.layer.name in shortcuts:
            order.append(shortcuts.pop(st.layer.name))
        order.append(st)
    names = {st.layer.name for st in stages}
    for st in stages:
        if st.layer.name not in producer and st.x_set is None:
            raise InputError(
                f"{folder}: layer {st.layer.key} has no input file and no layer of the set makes its "
                "x_int; make the set with every layer (`qexport dump --all --sfu`)"
            )
        fp = st.fixed
        if fp is not None and fp.add not in (None, "identity") and fp.add not in names:
            raise InputError(
                f"{folder}: layer {st.layer.key} adds {fp.add}'s fold, which the set does not hold; make "
                "the set with every layer (`qexport dump --all --sfu`)"
            )
    if shortcuts:  # a downsample whose block end is not in the set
        missing = next(iter(shortcuts))
        raise InputError(f"{folder}: the set has no layer {missing}, which a downsample adds into")
    return order, producer


def _infer_resnet_set(folder: Path, manifest: Manifest, batch_size: int, keep: bool) -> SetInferReport:
    """A ResNet set's run: per batch, each conv's exact psums; a block's conv1 through its thresholds
    to conv2; a block end ``max(fold(psum) + shortcut, 0)`` (the shortcut the previous block end's
    own accumulator rescaled, or the ``skip`` file where the set starts, or the downsample's fold)
    requantised to each consumer; the float end on the last block end's ``out * unit``."""
    stages = [_stage(folder, layer) for layer in sorted(manifest.layers, key=lambda entry: entry.conv_number)]
    if stages[0].layer.conv_number != 0:
        raise InputError(
            f"{folder}: the set starts at layer {stages[0].layer.key}, not at the network's first conv; "
            "make the set with every layer (`qexport dump --all --sfu`)"
        )
    order, producer = _resnet_order(folder, stages)
    end = manifest.classifier
    if end is None:
        raise InputError(
            f"{folder}: the manifest has no 'classifier' (the float end); make the set with "
            "`qexport dump --all --sfu` (the last conv with --sfu writes it)"
        )
    arrays = {a.key: _array(folder, a.path, a.sha256, a.shape) for a in end.files}
    rows = {
        st.layer.name: SetLayer(st.layer.name, str(st.layer.key), st.layer.next, _between(st))
        for st in stages
    }
    report = SetInferReport(manifest.model, list(rows.values()))
    kept: dict[str, list[np.ndarray]] = {st.layer.name: [] for st in stages}
    count = next(st.x_set.shape[0] for st in stages if st.x_set is not None)
    for start in range(0, count, batch_size):
        here = slice(start, start + batch_size)
        x: dict[str, np.ndarray] = {}
        outs: dict[str, np.ndarray] = {}
        terms: dict[str, np.ndarray] = {}
        for st in order:
            name, row, fp = st.layer.name, rows[st.layer.name], st.fixed
            made = x.pop(name, None)
            if made is None:  # _resnet_order checked the set has it
                made = st.x_set[here]  # type: ignore[index]
            if st.x_set is not None:
                row.differ_input = (row.differ_input or 0) + int((made != st.x_set[here]).sum())
            row.values += int(made.size)
            if keep:
                kept[name].append(made)
            psum = numpy_conv(made, st.w_int, st.layer.stride, st.layer.padding)
            if st.rule is not None and st.layer.next is not None:
                x[st.layer.next] = st.rule.apply(psum)
                row.differ_requant = _tally(row.differ_requant, x[st.layer.next], st.requant, here)
                continue
            if fp is None or st.fold is None:
                continue
            if fp.role == "shortcut":
                terms[name] = st.fold.apply(psum)
                continue
            shortcut = None
            if fp.add == "identity":
                source = producer.get(producer.get(name, ""), "")
                carried = outs.get(source)
                if carried is None and st.skip is None:
                    raise InputError(
                        f"{folder}: layer {st.layer.key} has no skip file (the block input its identity "
                        "shortcut adds) and no block end of the set makes it; re-export the set"
                    )
                if carried is not None and st.skip is not None:
                    row.differ_skip = (row.differ_skip or 0) + int((carried != st.skip[here]).sum())
                skip = carried if carried is not None else st.skip[here]  # type: ignore[index]
                shortcut = rshift_up(skip * (fp.skip_multiplier or 0), fp.skip_shift or 0)
            elif fp.add is not None:
                shortcut = terms.pop(fp.add)
            out = block_end(psum, st.fold, shortcut)
            widths = _widths(fp)
            outs[name] = check_skip(out, widths, f"layer {st.layer.key} output")
            for rq in fp.requant:
                x[rq.consumer] = Requant(rq.multiplier, rq.shift, rq.levels).apply(out)
                row.differ_requant = _tally(
                    row.differ_requant, x[rq.consumer], st.golden.get(rq.consumer), here
                )
            if not fp.requant:
                logits = _float_end(out, fp.unit, end, arrays)
                report.predictions.extend(int(p) for p in logits.argmax(1))
    if keep:
        report.x_int = {name: np.concatenate(parts) for name, parts in kept.items() if parts}
    return report


def _between(st: _Stage) -> tuple[str, ...]:
    """The ops after a conv as the report shows them (a downsample's: its fold into the block end)."""
    fp = st.fixed
    if fp is not None and fp.role == "shortcut":
        return ("batchnorm", f"into {fp.add_into}")
    return st.layer.between or ()


def _widths(fp: FixedPointEntry) -> FixedPointWidths:
    return FixedPointWidths(fp.mult_bits, fp.frac_bits, fp.skip_bits, fp.bias_bits)


def _tally(count: int | None, made: np.ndarray, golden: np.ndarray | None, here: slice) -> int | None:
    """``count`` plus how many of ``made`` differ from the set's ``golden`` batch (None: no file)."""
    if golden is None:
        return count
    return (count or 0) + int((made != golden[here]).sum())
