"""The context a rendered testbench needs: tiles, files, widths, from the layout's plan."""

from __future__ import annotations

from typing import Any

from qexport import __version__
from qexport.errors import InputError
from qexport.layout.declare import FileSpec
from qexport.layout.flat import LayerPlan, TensorPlan
from qexport.layout.profile import Profile, load_profile
from qexport.writer.pack import PackSpec
from qexport.writer.render import MemoryContext


def _need(value: int | None, tp: TensorPlan, key: str) -> int:
    if value is None:  # the systolic layout places every tile file; a plan without it is a bug there
        raise InputError(f"{tp.stem}: a systolic tile file names its {key}; the layout is incomplete")
    return value


_MAX_PASSES = 16  # the reference core's w_kij port is 4 bits


def _parameters(prof: Profile, kernel: int, stride: int, grid: int, out_bits: int) -> dict[str, int]:
    """The DUT's parameters, as tb.sv passes them (the cocotb runner sets them at build)."""
    return {
        "ROWS": prof.rows,
        "COLS": prof.cols,
        "ACT_BITS": prof.act_bits,
        "W_BITS": prof.w_bits,
        "PSUM_BITS": prof.psum_bits,
        "OUT_BITS": out_bits,
        "TILE": prof.tile,
        "KERNEL": kernel,
        "STRIDE": stride,
        "GRID": grid,
        "ADDR_BITS": prof.address_bits,
        "WEIGHT_STATIONARY": int(prof.dataflow == "weight_stationary"),
        "RELU": int("relu" in prof.golden),
    }


_STREAMED = {"output_stationary": "course-os", "input_stationary": "systolic-is"}
"""The built-in profile whose file layouts the streamed testbench and its reference core read."""

_CORE_FILE = {"output_stationary": "qexport_ref_core_os.v", "input_stationary": "qexport_ref_core_is.v"}


def _shape(spec: FileSpec, prof: Profile) -> tuple[object, ...]:
    """What the streamed testbench reads of a file kind: everything but its name."""
    return (set(spec.files), spec.lines, spec.lanes, dict(spec.split), spec.lane_order or prof.lane_order)


def check_drivable(prof: Profile) -> None:
    """The rendered testbenches drive the built-in file layouts: weight-stationary grids, or the
    `course-os` / `systolic-is` streams (their names may differ); refuse any other layout."""
    if prof.dataflow == "weight_stationary":
        return
    builtin = load_profile(_STREAMED[prof.dataflow])
    for kind in ("activation", "weight", "output"):
        want = builtin.files[kind]
        if _shape(prof.files[kind], prof) != _shape(want, builtin):
            raise InputError(
                f"profile {prof.name}: its [files.{kind}] is not the {builtin.name} layout (files "
                f"{list(want.files)}, lines {[' '.join(g) for g in want.lines]}, lanes {list(want.lanes)}, "
                f"{want.lane_order or builtin.lane_order}), which the rendered "
                f"{prof.dataflow.replace('_', '-')} testbench and its reference core read; write the "
                "vectors with `qexport dump` and drive your core from them, or keep that layout "
                "(only its name patterns may change) for `qexport testbench`"
            )


def _check_sfu(plan: LayerPlan, label: str, by_kind: dict[str, list[TensorPlan]]) -> None:
    """``--sfu`` checks threshold SFUs: the plan must hold this layer's threshold files."""
    where = label if label == plan.name else f"{label} ({plan.name})"
    if "multiplier" in by_kind:
        raise InputError(
            f"testbench --sfu: layer {where}'s SFU is fixed point (a residual add); the rendered "
            "SFU stage checks threshold SFUs (VGG layers with a next conv) only; drop --sfu, or check "
            "the fixed-point requant files from `qexport dump --sfu`"
        )
    if "requant" not in by_kind:
        raise InputError(
            f"testbench --sfu: layer {where} has no SFU files to check: no next quantized conv reads "
            "its output through a thresholdable chain ([BatchNorm] -> ReLU -> [max-pool], a VGG's "
            "features); drop --sfu, or choose a VGG layer with a next conv"
        )


def testbench_context(
    plan: LayerPlan, memory: MemoryContext, prof: Profile, *, vcd: bool = False, sfu: bool = False
) -> dict[str, Any]:
    """``plan``'s tiles as the testbench template walks them; ``memory`` names the model and format;
    ``vcd`` makes tb.sv dump waveforms (``$dumpvars`` of tb and the DUT) and the scripts trace;
    ``sfu`` adds the SFU stage (the plan's threshold, direction and requant files)."""
    check_drivable(prof)
    by_kind: dict[str, list[TensorPlan]] = {}
    for tp in plan.tensors:
        by_kind.setdefault(tp.tensor, []).append(tp)
    if prof.dataflow != "weight_stationary":
        return _streamed_context(plan, memory, prof, by_kind, vcd)

    def path(tp: TensorPlan) -> str:
        return f"{tp.stem}.{memory.fmt}"  # as render_memory names the file

    activation = {
        (_need(tp.where.tile, tp, "tile"), _need(tp.where.itile, tp, "itile")): path(tp)
        for tp in by_kind["input"]
    }
    weights = {
        (
            _need(tp.where.itile, tp, "itile"),
            _need(tp.where.otile, tp, "otile"),
            _need(tp.where.kij, tp, "kij"),
        ): path(tp)
        for tp in by_kind["weight"]
    }
    itiles = 1 + max(i for _, i in activation)
    passes = 1 + max(k for _, _, k in weights)  # kernel passes, kernel * kernel
    kernel = _kernel(plan, passes)
    tiles: list[dict[str, Any]] = []
    for out in by_kind["output"]:
        s, o = _need(out.where.tile, out, "tile"), _need(out.where.otile, out, "otile")
        runs = [(activation[(s, i)], [weights[(i, o, k)] for k in range(passes)]) for i in range(itiles)]
        tiles.append({"tile": s, "otile": o, **_output_tile(out, path(out), runs)})
    # the grid and stride as the layout wrote them: (1, G, G, rows) an activation file,
    # G = (tile-1)*stride + kernel (with one output pixel a tile the stride changes no address)
    grid = int(by_kind["input"][0].array.shape[1])
    stride = (grid - kernel) // (prof.tile - 1) if prof.tile > 1 else 1
    address = by_kind["address"][0] if "address" in by_kind else None
    out_spec = by_kind["output"][0].spec
    extra: dict[str, Any] = {}
    if sfu:
        _check_sfu(plan, str(memory.layer), by_kind)
        by_otile = {
            kind: {_need(tp.where.otile, tp, "otile"): path(tp) for tp in by_kind[kind]}
            for kind in ("threshold", "direction")
        }
        requant = {
            (_need(tp.where.tile, tp, "tile"), _need(tp.where.otile, tp, "otile")): tp
            for tp in by_kind["requant"]
        }
        for t in tiles:
            rq = requant[(t["tile"], t["otile"])]
            if rq.where.y is None or rq.where.x is None:
                raise InputError(f"{rq.stem}: a requant tile names its y and x; the layout is incomplete")
            t.update(  # ry0, rx0: the tile's origin in the requant map (after the pool)
                threshold=by_otile["threshold"][t["otile"]],
                direction=by_otile["direction"][t["otile"]],
                requant=path(rq),
                ry0=rq.where.y[0],
                rx0=rq.where.x[0],
            )
        rq, th = by_kind["requant"][0], by_kind["threshold"][0]
        side = int(rq.array.shape[1])  # (1, tile / pool, tile / pool, cols)
        extra = {
            "t_bits": th.spec.lane_bits,
            "levels": int(th.array.shape[0]),  # (t, c): a word a threshold
            "x_bits": rq.spec.lane_bits,
            "pool": prof.tile // side,
            "rq_side": side,
        }
    return {
        **_shared_context(memory, prof, out_spec, kernel),
        "psum_bits": prof.psum_bits,
        "stride": stride,
        "grid": grid,
        "address_bits": prof.address_bits,
        "weight_stationary": prof.dataflow == "weight_stationary",
        "relu": "relu" in prof.golden,
        "address_file": "" if address is None else path(address),
        "tiles": sorted(tiles, key=lambda t: (t["tile"], t["otile"])),
        "parameters": dict(sorted(_parameters(prof, kernel, stride, grid, out_spec.lane_bits).items())),
        "vcd": vcd,
        "dut": "qexport_ref_core",
        "dut_file": "qexport_ref_core.v",
        "sfu": sfu,
        **extra,
    }


def _shared_context(memory: MemoryContext, prof: Profile, out_spec: PackSpec, kernel: int) -> dict[str, Any]:
    """What every testbench template reads of the set, the array and the layer."""
    return {
        "version": __version__,
        "model": memory.model,
        "demo": memory.demo_label,
        "profile": prof.name,
        "layer": memory.layer,
        "folder": memory.folder,
        "radix": "h" if memory.fmt == "hex" else "b",
        "rows": prof.rows,
        "cols": prof.cols,
        "act_bits": prof.act_bits,
        "w_bits": prof.w_bits,
        "out_bits": out_spec.lane_bits,
        "out_signed": out_spec.signed,
        "tile": prof.tile,
        "kernel": kernel,
    }


def _kernel(plan: LayerPlan, taps: int) -> int:
    """The kernel side of ``taps`` kernel positions; more than the w_kij port drives is refused."""
    kernel = round(taps**0.5)
    if taps > _MAX_PASSES:
        raise InputError(
            f"layer {plan.name} is a {kernel}x{kernel} conv: {taps} kernel passes; the testbench's "
            f"w_kij port has 4 bits, so it drives at most {_MAX_PASSES} (a 4x4 kernel)"
        )
    return int(kernel)


def _output_tile(out: TensorPlan, path: str, runs: list[tuple[str, list[str]]]) -> dict[str, Any]:
    """What both testbenches know of a golden file: its image, first pixel and channels, and per
    input-channel tile (``runs``) the activation file and the weight files by kernel position."""
    at = out.where
    if at.y is None or at.x is None or at.oc is None:
        raise InputError(f"{out.stem}: a golden tile file names its y, x and oc; the layout is incomplete")
    return {
        "n": _need(at.n, out, "n"),
        "y0": at.y[0],
        "x0": at.x[0],
        "oc0": at.oc[0],
        "oc1": at.oc[1],
        "out": path,
        "itiles": [{"itile": i, "activation": act, "weights": taps} for i, (act, taps) in enumerate(runs)],
    }


def _streamed_context(
    plan: LayerPlan, memory: MemoryContext, prof: Profile, by_kind: dict[str, list[TensorPlan]], vcd: bool
) -> dict[str, Any]:
    """The output- / input-stationary testbench's context (``tb_streamed.sv.j2``): per tile, pass
    and output-channel tile its golden file, and per input-channel tile (output-stationary: the
    one stream of every input channel) its activation file and weight files by kernel position."""
    os = prof.dataflow == "output_stationary"
    per_pass = prof.rows if os else prof.cols

    def path(tp: TensorPlan) -> str:
        return f"{tp.stem}.{memory.fmt}"  # as render_memory names the file

    def pass_of(tp: TensorPlan) -> int:
        if tp.where.pixels is None:  # the streamed layouts place every pass's file; else a bug there
            raise InputError(f"{tp.stem}: a streamed tile file names its pixels; the layout is incomplete")
        return tp.where.pixels[0] // per_pass

    def itile_of(tp: TensorPlan) -> int:  # output-stationary: one stream holds every input channel
        return 0 if os else _need(tp.where.itile, tp, "itile")

    activation = {
        (_need(tp.where.tile, tp, "tile"), itile_of(tp), pass_of(tp)): path(tp) for tp in by_kind["input"]
    }
    weights = {
        (itile_of(tp), _need(tp.where.otile, tp, "otile"), _need(tp.where.kij, tp, "kij")): path(tp)
        for tp in by_kind["weight"]
    }
    itiles = 1 + max(i for _, i, _ in activation)
    taps = 1 + max(k for _, _, k in weights)
    kernel = _kernel(plan, taps)
    tiles = []
    for out in by_kind["output"]:
        s, o, q = _need(out.where.tile, out, "tile"), _need(out.where.otile, out, "otile"), pass_of(out)
        first, last = out.where.pixels or (0, 0)  # pass_of has checked them
        runs = [(activation[(s, i, q)], [weights[(i, o, k)] for k in range(taps)]) for i in range(itiles)]
        tiles.append(
            {
                "tile": s,
                "pass": q,
                "otile": o,
                "pixel0": first,
                "pixel1": last,
                **_output_tile(out, path(out), runs),
            }
        )
    out_spec = by_kind["output"][0].spec
    dataflow = prof.dataflow.replace("_", "-")
    core = _CORE_FILE[prof.dataflow]
    return {
        **_shared_context(memory, prof, out_spec, kernel),
        "dataflow": dataflow,
        # output-stationary: one stream holds every input channel (ic*taps + kij lines of rows lanes)
        "channels": int(by_kind["input"][0].array.size) // (taps * prof.rows) if os else prof.rows,
        "output_stationary": os,
        "itiles": itiles,
        "relu": "relu" in prof.golden,
        "tiles": sorted(tiles, key=lambda t: (t["tile"], t["pass"], t["otile"])),
        "vcd": vcd,
        "sfu": False,  # the SFU stage is weight-stationary only (api.testbench refuses it here)
        "dut": core.removesuffix(".v"),
        "dut_file": core,
    }
