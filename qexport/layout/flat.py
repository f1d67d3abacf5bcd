"""Arrange a layer's integer tensors for memory: axis order, padding, lane widths (flat layout).

The flat layout puts channels innermost, so with 8 lanes one word holds 8 channels of one pixel
(inputs, psums, outputs) or 8 input channels of one kernel tap (weights):

    weight  (oc, kh, kw, ic)   input  (n, h, w, c)   psum / output  (n, h, w, c)

A word never straddles two pixels or taps: channels are padded with zero lanes to a multiple of
the lanes (3 channels, 8 lanes: one word a pixel, lanes 3..7 zero), unless the profile says
``pad_channels = false``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, cast

import numpy as np

from qexport.errors import BitWidthError
from qexport.ir.fixed_point import MAX_SHIFT, LayerFixedPoint
from qexport.ir.integerize import IntLayer
from qexport.ir.reference import Psums, psum_bound
from qexport.ir.sfu import LayerSfu
from qexport.layout.options import InputSign as InputSign  # re-exported: the public path
from qexport.layout.options import LayoutOptions as LayoutOptions
from qexport.layout.placement import Placement
from qexport.writer.pack import LaneOrder, PackSpec, check_fits, smallest_signed_bits

Tensor = Literal[
    "weight",
    "input",
    "psum",
    "output",
    "address",
    "threshold",
    "direction",
    "requant",
    "multiplier",
    "shift",
    "bias",
    "skip",
    "requant_shortcut",
]


@dataclass(frozen=True)
class TensorPlan:
    """One memory file ready to pack: ``array`` already in ``axes`` order (C order flattening).

    ``stem`` is the file's path inside the export without its extension; ``where`` (a tiled
    file's tile and channel ranges) goes into the file's manifest entry.
    """

    tensor: Tensor
    stem: str
    array: np.ndarray
    axes: tuple[str, ...]
    spec: PackSpec
    padded: bool | None = None
    notice: str | None = None
    where: Placement = Placement()
    pad_to: int = 1
    """Words hold the last axis (channels) padded with zero lanes to a multiple of this."""

    @property
    def channel_padding(self) -> ChannelPadding | None:
        """How many channels are real and how many zero lanes pad them; None if none do.

        (1, 32, 32, 3) with pad_to 8 -> ``ChannelPadding(channels=3, padded_channels=5)``.
        """
        channels = self.array.shape[-1] if self.array.ndim else 1
        extra = -channels % self.pad_to
        return ChannelPadding(channels, extra) if extra else None

    def lane_values(self) -> np.ndarray:
        """``array`` as its words hold it: (1, 32, 32, 3) with pad_to 8 -> (1, 32, 32, 8), lanes
        3..7 zero; nothing to pad -> ``array`` itself."""
        padding = self.channel_padding
        if padding is None:
            return self.array
        widths = [(0, 0)] * (self.array.ndim - 1) + [(0, padding.padded_channels)]
        return np.pad(self.array, widths)


@dataclass(frozen=True, slots=True)
class ChannelPadding:
    """The last axis holds ``channels`` real values, then ``padded_channels`` zero lanes."""

    channels: int
    padded_channels: int


@dataclass(frozen=True)
class LayerPlan:
    """One layer's memory files as its layout arranged them.

    ``name`` is the layer's module path (``features.33``), its identity; ``layer`` the features
    index, the VGG alias the CLI and manifests show.
    """

    name: str
    layer: int | None
    conv_number: int
    tensors: tuple[TensorPlan, ...]


def with_defaults(opts: LayoutOptions, lanes: int, psum_lanes: int, lane_order: LaneOrder) -> LayoutOptions:
    """Fill the options a user left open from a profile."""
    return replace(
        opts,
        lanes=opts.lanes or lanes,
        psum_lanes=opts.psum_lanes or psum_lanes,
        lane_order=opts.lane_order or lane_order,
    )


def _spec(bits: int, lanes: int | None, signed: bool, opts: LayoutOptions) -> PackSpec:
    # options left open fall back to the flat profile's defaults
    return PackSpec(bits, lanes or 8, signed, opts.lane_order or "lsb_first")


def input_spec(layer: IntLayer, opts: LayoutOptions) -> tuple[PackSpec, str | None]:
    """Unsigned act_bit lanes when the activations fit; otherwise signed, if allowed."""
    low = int(layer.x_int.min(initial=0))
    high = int(layer.x_int.max(initial=0))
    unsigned = _spec(layer.act_bit, opts.lanes, False, opts)
    where = f"layer {layer.label} x_int"
    if opts.input_sign == "unsigned" or (opts.input_sign == "auto" and low >= 0):
        check_fits(
            layer.x_int,
            unsigned,
            where,
            "use --input-sign auto (signed lanes) or --act-clip relu (clip the input at 0)",
        )
        return unsigned, None
    bits = max(smallest_signed_bits(low, high), layer.act_bit + 1)
    signed = _spec(bits, opts.lanes, True, opts)
    notice = (
        f"layer {layer.label}: x_int spans [{low}, {high}] (no lower clip on the normalised image), "
        f"so its input is written as signed {bits}-bit lanes"
        if low < 0
        else None
    )
    return signed, notice


def psum_bits_for(layer: IntLayer, x_spec: PackSpec) -> int:
    """Signed width that holds the worst-case psum for any input the input lanes can carry."""
    bound = psum_bound(layer, x_spec.value_range)
    return smallest_signed_bits(-bound, bound)


def signed_bits_of(values: np.ndarray) -> int:
    """Fewest two's-complement bits that hold every value of ``values`` (1 for none)."""
    if values.size == 0:
        return 1
    return smallest_signed_bits(int(values.min()), int(values.max()))


def check_psum_width(
    values: np.ndarray, bits: int, where: str, narrow: str, setting: str, worst: int
) -> None:
    """Refuse psums that signed ``bits`` cannot hold, naming the width they need and the worst case.

    ``layer 33 psums span [-412, 977]: need 11 bits signed; --psum-bits 8 is too narrow; use
    --psum-bits 11 (these values) or 14 (this layer's worst case)``
    """
    if values.size == 0:
        return
    need = signed_bits_of(values)
    if need > bits:
        low, high = int(values.min()), int(values.max())
        raise BitWidthError(
            f"{where} psums span [{low}, {high}]: need {need} bits signed; {narrow}; use {setting} "
            f"{need} (these values) or {worst} (this layer's worst case)"
        )


def threshold_values(sfu: LayerSfu, psum_bits: int) -> np.ndarray:
    """The thresholds (C, L) as a file holds them: clamped to the psums a signed ``psum_bits`` lane
    holds, so every threshold fits ``psum_bits + 1`` bits and the rule is unchanged for those psums.

    psum_bits 14: psums in [-8192, 8191], thresholds in [-8193, 8193].
    """
    return sfu.thresholds.clamped(2 ** (psum_bits - 1)).thresholds


def sfu_specs(
    sfu: LayerSfu, psum_bits: int, lanes: int, psum_lanes: int, lane_order: LaneOrder
) -> tuple[PackSpec, PackSpec, PackSpec]:
    """The threshold, direction and requant lanes: signed, the smallest width holding the clamped
    thresholds; signed 2-bit directions (-1, 0, 1); unsigned next ``act_bit`` requant lanes."""
    return (
        PackSpec(signed_bits_of(threshold_values(sfu, psum_bits)), psum_lanes, True, lane_order),
        PackSpec(2, psum_lanes, True, lane_order),
        PackSpec(sfu.next_act_bit, lanes, False, lane_order),
    )


SHIFT_BITS = MAX_SHIFT.bit_length()
"""Unsigned lanes of a fixed-point ``shift`` file: every fold / rescale shift is in [0, MAX_SHIFT]."""


def fixed_point_specs(
    fp: LayerFixedPoint, psum_lanes: int, lane_order: LaneOrder
) -> tuple[PackSpec, PackSpec, PackSpec, PackSpec]:
    """The multiplier (signed ``mult_bits``), shift (unsigned ``SHIFT_BITS``), bias (signed
    ``bias_bits``) and skip (unsigned ``skip_bits``) lanes of a fixed-point SFU."""
    w = fp.widths
    return (
        PackSpec(w.mult_bits, psum_lanes, True, lane_order),
        PackSpec(SHIFT_BITS, psum_lanes, False, lane_order),
        PackSpec(w.bias_bits, psum_lanes, True, lane_order),
        PackSpec(w.skip_bits, psum_lanes, False, lane_order),
    )


def fixed_point_plans(
    fp: LayerFixedPoint, prefix: str, lanes: int, psum_lanes: int, lane_order: LaneOrder
) -> list[TensorPlan]:
    """A fixed-point SFU's flat files: ``multiplier``, ``shift``, ``bias`` (c), the identity
    shortcut's ``skip`` (n, h, w, c) and each consumer's golden ``requant`` (n, h, w, c)."""
    m_spec, s_spec, b_spec, k_spec = fixed_point_specs(fp, psum_lanes, lane_order)
    nhwc = (0, 2, 3, 1)
    plans = [
        TensorPlan("multiplier", prefix + "multiplier", fp.fold.multiplier, ("c",), m_spec),
        TensorPlan("shift", prefix + "shift", fp.fold.shift, ("c",), s_spec),
        TensorPlan("bias", prefix + "bias", fp.fold.bias, ("c",), b_spec),
    ]
    if fp.skip is not None:
        plans.append(
            TensorPlan("skip", prefix + "skip", fp.skip.transpose(nhwc), ("n", "h", "w", "c"), k_spec)
        )
    for rq in fp.requants:
        spec = PackSpec(int(rq.rule.levels).bit_length(), lanes, False, lane_order)
        tensor = cast(Tensor, rq.tensor)
        plans.append(
            TensorPlan(tensor, prefix + rq.tensor, rq.x_int.transpose(nhwc), ("n", "h", "w", "c"), spec)
        )
    return plans


def flat_layout(
    layer: IntLayer,
    psums: Psums,
    opts: LayoutOptions,
    prefix: str,
    *,
    pad_channels: bool = True,
    sfu: LayerSfu | LayerFixedPoint | None = None,
) -> list[TensorPlan]:
    """The four tensors of one layer in the flat layout, as ``<prefix><tensor>`` files, and with
    ``sfu`` its ``threshold`` (c, t), ``direction`` (c) and ``requant`` (n, h, w, c) files.

    ``pad_channels`` (the profile's key): each pixel's / kernel tap's channels start a new word,
    padded with zero lanes; False packs the channels of neighbouring pixels into one word.
    """
    x_spec, notice = input_spec(layer, opts)
    worst_bits = psum_bits_for(layer, x_spec)
    psum_bits = opts.psum_bits or worst_bits
    psum_spec = _spec(psum_bits, opts.psum_lanes or 1, True, opts)
    out_spec = _spec(psum_bits, opts.psum_lanes or 1, False, opts)
    w_spec = _spec(layer.w_bit, opts.lanes, True, opts)
    check_fits(layer.w_int, w_spec, f"layer {layer.label} w_int", "the weights exceed w_bit")
    check_psum_width(
        psums.psum,
        psum_bits,
        f"layer {layer.label}",
        f"--psum-bits {psum_bits} is too narrow",
        "--psum-bits",
        worst_bits,
    )
    x = layer.x_int
    if opts.pad_input and layer.padding:
        p = layer.padding
        x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    nhwc = (0, 2, 3, 1)
    plans = [
        TensorPlan(
            "weight", prefix + "weight", layer.w_int.transpose(0, 2, 3, 1), ("oc", "kh", "kw", "ic"), w_spec
        ),
        TensorPlan(
            "input", prefix + "input", x.transpose(nhwc), ("n", "h", "w", "c"), x_spec, opts.pad_input, notice
        ),
        TensorPlan("psum", prefix + "psum", psums.psum.transpose(nhwc), ("n", "h", "w", "c"), psum_spec),
        TensorPlan("output", prefix + "output", psums.output.transpose(nhwc), ("n", "h", "w", "c"), out_spec),
    ]
    if isinstance(sfu, LayerFixedPoint):
        plans += fixed_point_plans(
            sfu, prefix, opts.lanes or 8, opts.psum_lanes or 1, opts.lane_order or "lsb_first"
        )
    elif sfu is not None:
        t_spec, d_spec, r_spec = sfu_specs(
            sfu, psum_bits, opts.lanes or 8, opts.psum_lanes or 1, opts.lane_order or "lsb_first"
        )
        direction = sfu.thresholds.direction.astype(np.int64)
        plans += [
            TensorPlan(
                "threshold", prefix + "threshold", threshold_values(sfu, psum_bits), ("c", "t"), t_spec
            ),
            TensorPlan("direction", prefix + "direction", direction, ("c",), d_spec),
            TensorPlan(
                "requant", prefix + "requant", sfu.requant.transpose(nhwc), ("n", "h", "w", "c"), r_spec
            ),
        ]
    if not pad_channels:
        return plans
    # RTL reads one pixel (or kernel tap) a word group: its channels never share a word with the next
    return [replace(tp, pad_to=tp.spec.lanes) for tp in plans]
