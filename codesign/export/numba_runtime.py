"""Load and run a ``numba`` program (``codesign.export.numba_program``) with the project's kernels.

``load_program(directory)`` reads ``program.json`` and ``weights.safetensors`` (numpy arrays,
no pickles), checks every layer against its kernel's operands and binds one step per layer;
``Program.__call__(x)`` runs an NCHW float32 batch end to end on numpy arrays only (NHWC inside):

* convolutions: ``conv.conv2d`` (fp32 im2col + GEMM), ``conv.depthwise_conv2d``,
  ``conv_int8.conv2d_int8`` (int8 im2col + int8/int4-weight GEMM), ``conv_int8.
  depthwise_conv2d_int8``; 1x1 convs and linears as GEMMs (``gemm_f32``, ``gemm_int8``) or
  sparse GEMMs (``sparse.spmm_nm`` / ``spmm_bsr`` / ``spmm_csr``);
* each int8 layer's int32 accumulators requantised to the next layer's int8 grid with the bias
  and fused activation in the same pass (``epilogue.requantize_act``); fp32 layers get their bias
  and activation from ``epilogue.bias_act``; residual adds, global pooling and the precision
  boundaries from ``codesign.kernels.epilogue``.

``time_program`` times it (warm-ups, repeats, p50 / p90) at a thread count: numba's threads are
set to it and the GEMMs run their parallel drivers when it is above 1 (depthwise convs and
the element-wise glue stay on one thread). A malformed program raises ``BadInput`` with one line.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from codesign.userinput import BadInput

PROGRAM_FORMAT = "codesign-numba-program/1"  # as codesign.export.numba_program writes
PROGRAM_FILE, WEIGHTS_FILE = "program.json", "weights.safetensors"


def _tile(d: dict | None):
    from codesign.kernels.specs import TileSpec

    return None if d is None else TileSpec(**{k: int(d[k]) for k in ("mc", "nc", "kc", "mr", "nr")})


class _Bind:
    """Turns one layer entry into a step ``values -> array`` (ValueError when malformed)."""

    def __init__(self, tensors: dict[str, np.ndarray], parallel: bool) -> None:
        self.tensors, self.parallel = tensors, parallel

    def t(self, name: str) -> np.ndarray:
        if name not in self.tensors:
            raise ValueError(f"tensor {name!r} missing from {WEIGHTS_FILE}")
        return self.tensors[name]

    def step(self, e: dict[str, Any]) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        op = e["op"]
        if op in ("conv2d", "depthwise_conv2d", "linear"):
            return self.layer(e)
        from codesign.kernels import epilogue as ep

        src = e["inputs"]
        if op == "quantize":
            scale = float(e["out_scale"])
            return lambda v: ep.quantize(v[src[0]], scale)
        if op == "dequantize":
            scale = float(e["in_scale"])
            return lambda v: ep.dequantize(v[src[0]], scale)
        if op == "add":
            if e["out_dtype"] == "int8":
                (sa, sb), so = map(float, e["in_scales"]), float(e["out_scale"])
                return lambda v: ep.add_int8(v[src[0]], sa, v[src[1]], sb, so)
            return lambda v: v[src[0]] + v[src[1]]
        if op == "global_pool":
            if e["out_dtype"] == "int8":
                si, so = float(e["in_scales"][0]), float(e["out_scale"])
                return lambda v: ep.quantize(ep.global_avg_pool_int8(v[src[0]], si), so)
            return lambda v: ep.global_avg_pool(v[src[0]])
        if op == "free":
            return lambda v: v[src[0]]
        raise ValueError(f"unknown op {op!r}")

    def layer(self, e: dict[str, Any]) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        from codesign.kernels import epilogue as ep

        fmt, act, src = e["format"], e.get("act"), e["inputs"][0]
        ep.act_code(act)
        bias = self.t(e["bias"])
        out_shape = tuple(int(d) for d in e["out_shape"])
        int8 = fmt in ("w8a8", "w4a8")
        if int8:
            scale = self.t(e["acc_scale"])
            out_scale = float(e["out_scale"])

            def finish(acc: np.ndarray) -> np.ndarray:
                acc2 = acc.reshape(-1, acc.shape[-1])
                return ep.requantize_act(acc2, scale, bias, act, out_scale).reshape(acc.shape)
        else:
            def finish(y: np.ndarray) -> np.ndarray:
                ep.bias_act(y.reshape(-1, y.shape[-1]), bias, act)
                return y
        core = self.core(e, fmt, int8)
        if e["op"] == "linear":
            return lambda v: finish(core(v[src].reshape(v[src].shape[0], -1)))
        if "gemm" in e:  # a 1x1 stride-1 conv: a GEMM over the NHWC pixels
            def run(v):
                x = v[src]
                y = core(x.reshape(-1, x.shape[-1]))
                return finish(y).reshape(x.shape[:3] + (y.shape[-1],))
            return run
        return lambda v: finish(core(v[src]))

    def core(self, e: dict[str, Any], fmt: str, int8: bool) -> Callable[[np.ndarray], np.ndarray]:
        """The layer's kernel call: float32 output, or int32 accumulators for int8 layers."""
        from codesign.kernels import conv, conv_int8, gemm_f32, gemm_int8, sparse
        from codesign.kernels import sparse_formats as sf

        wts, par = e["weights"], self.parallel
        if "gemm" in e:
            k, n = int(e["gemm"]["k"]), int(e["gemm"]["n"])
            if int8:
                packed = gemm_int8.PackedIntWeights(self.t(wts["packed"]), k, n, int(wts["nr"]),
                                                    int(wts["bits"]))
                packed.check()
                tile = _tile(e["tile_run"])
                return lambda x: gemm_int8.gemm_i8_i32(x, packed, tile, parallel=par)
            if fmt == "fp32":
                w = self.t(wts["w"])
                if w.shape != (k, n):
                    raise ValueError(f"{e['name']}: weights {w.shape}, plan ({k}, {n})")
                tile = _tile(e["tile_run"])
                return lambda x: gemm_f32.gemm_f32(x, w, tile, parallel=par)
            if fmt.startswith("fp32+block"):
                bsr = sf.BSRWeights(self.t(wts["indptr"]), self.t(wts["indices"]),
                                    self.t(wts["data"]), k, n)
                bsr.check()
                return lambda x: sparse.spmm_bsr(x, bsr, parallel=par)
            if fmt == "fp32+csr":
                csr = sf.CSRWeights(self.t(wts["indptr"]), self.t(wts["indices"]),
                                    self.t(wts["data"]), k, n)
                csr.check()
                return lambda x: sparse.spmm_csr(x, csr, parallel=par)
            if fmt.startswith("fp32+") and ":" in fmt:
                nm = sf.NMWeights(self.t(wts["values"]), self.t(wts["meta"]), k, int(wts["n"]),
                                  int(wts["m"]))
                nm.check()
                return lambda x: sparse.spmm_nm(x, nm, parallel=par)
            raise ValueError(f"{e['name']}: unknown format {fmt!r}")
        stride, pad = int(e["stride"]), int(e["pad"])
        if e["op"] == "depthwise_conv2d":
            if int8:
                w = self.t(wts["w"])
                if int(wts["bits"]) == 4:
                    w = conv_int8.PackedDepthwiseInt4(w, int(e["out_shape"][-1]))
                    w.check()
                return lambda x: conv_int8.depthwise_conv2d_int8(x, w, None, None, stride, pad)
            w = self.t(wts["w"])
            return lambda x: conv.depthwise_conv2d(x, w, None, stride, pad)
        if int8:
            kh, kw, cin = int(wts["kh"]), int(wts["kw"]), int(wts["c_in"])
            gemm = gemm_int8.PackedIntWeights(self.t(wts["packed"]), kh * kw * cin,
                                              int(e["out_shape"][-1]), int(wts["nr"]),
                                              int(wts["bits"]))
            packed = conv_int8.PackedConvWeights(gemm, kh, kw, cin)
            packed.check()
            tile = _tile(e["tile_run"])
            return lambda x: conv_int8.conv2d_int8(x, packed, None, None, stride, pad,
                                                   tile=tile, parallel=par)
        w = self.t(wts["w"])
        tile = _tile(e["tile_run"])
        return lambda x: conv.conv2d(x, w, None, stride, pad, tile, parallel=par)


@dataclass
class Program:
    """A loaded program: ``program(x)`` maps an NCHW float32 batch to float32 outputs."""

    directory: Path
    plan: dict[str, Any]
    steps: list[tuple[str, Callable, list[str]]]
    last_use: dict[str, int]
    threads: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.plan["input_shape"])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[1:] != self.input_shape[1:]:
            raise ValueError(f"input must be (N, {', '.join(map(str, self.input_shape[1:]))}) "
                             f"NCHW, got {x.shape}")
        values = {"": np.ascontiguousarray(x.transpose(0, 2, 3, 1))}
        out = values[""]
        for i, (name, step, inputs) in enumerate(self.steps):
            out = values[name] = step(values)
            for src in inputs:  # free each intermediate after its last reader
                if self.last_use.get(src) == i:
                    values.pop(src, None)
        return out


def _read_plan(directory: Path) -> dict[str, Any]:
    path = directory / PROGRAM_FILE
    if not directory.is_dir():
        raise BadInput(f"{directory}: no such program directory")
    if not path.is_file():
        raise BadInput(f"{directory}: not a numba program (no {PROGRAM_FILE})")
    try:
        plan = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(plan, dict) or plan.get("format") != PROGRAM_FORMAT:
        found = plan.get("format") if isinstance(plan, dict) else type(plan).__name__
        raise BadInput(f"{path}: format {found!r}, expected {PROGRAM_FORMAT!r}")
    if not isinstance(plan.get("layers"), list) or not plan["layers"]:
        raise BadInput(f"{path}: no layers")
    return plan


def load_program(directory: str | Path, *, threads: int = 1) -> Program:
    """Load ``directory`` (``program.json`` + ``weights.safetensors``) to run at ``threads``.

    Raises:
        BadInput: a missing or malformed file, a layer whose operands its kernel rejects, or a
            thread count numba cannot run (one line naming the file and the layer).
    """
    directory = Path(directory)
    plan = _read_plan(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise BadInput(f"{directory}: no {WEIGHTS_FILE}")
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise BadInput(f"{weights}: unreadable: {exc}") from None
    return bind_program(plan, tensors, directory=directory, threads=threads)


def bind_program(plan: dict[str, Any], tensors: dict[str, np.ndarray], *,
                 directory: Path = Path("."), threads: int = 1) -> Program:
    """A ``Program`` from an in-memory plan and its arrays (what ``load_program`` reads)."""
    set_threads(threads)
    bind = _Bind(tensors, parallel=threads > 1)
    steps, last_use, seen = [], {}, {""}
    for i, entry in enumerate(plan["layers"]):
        name = entry.get("name") if isinstance(entry, dict) else None
        try:
            inputs = list(entry["inputs"])
            missing = [s for s in inputs if s not in seen]
            if missing:
                raise ValueError(f"reads {missing[0]!r} before any layer writes it")
            steps.append((str(name), bind.step(entry), inputs))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            raise BadInput(f"{directory / PROGRAM_FILE}: layer {i} ({name}): {what}") from None
        seen.add(str(name))
        for src in inputs:
            last_use[src] = i
    if plan.get("output") != steps[-1][0]:
        raise BadInput(f"{directory / PROGRAM_FILE}: output {plan.get('output')!r} is not the "
                       "last layer")
    try:
        tuple(int(d) for d in plan["input_shape"])
    except (KeyError, TypeError, ValueError):
        raise BadInput(f"{directory / PROGRAM_FILE}: bad input_shape") from None
    return Program(directory, plan, steps, last_use, threads)


def set_threads(threads: int) -> None:
    """numba's thread count for the parallel GEMM drivers (BadInput above its pool)."""
    import numba

    if threads < 1 or threads > numba.config.NUMBA_NUM_THREADS:
        raise BadInput(f"--threads {threads}: numba runs 1 to {numba.config.NUMBA_NUM_THREADS} "
                       "threads here")
    numba.set_num_threads(threads)


@dataclass(frozen=True)
class Timing:
    p50_s: float
    p90_s: float
    min_s: float
    first_run_s: float
    repeats: int
    warmup: int
    threads: int
    loadavg_1m: float
    clock: str

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def time_program(program: Program, x: np.ndarray, *, warmup: int = 5,
                 repeats: int = 30, clock: str = "auto") -> Timing:
    """Time ``program(x)``: the first run (kernels compile), ``warmup`` more, then ``repeats``
    timed runs; p50 / p90 / min, with the 1-minute load average.

    ``clock``: ``cpu`` (the calling thread's CPU time: on a shared machine a preempted run is
    not charged for the time others ran; one thread only), ``wall``, or ``auto`` (cpu at one
    thread, else wall), as ``codesign measure --clock``."""
    if clock == "auto":
        clock = "cpu" if program.threads == 1 else "wall"
    if clock not in ("cpu", "wall") or (clock == "cpu" and program.threads != 1):
        raise BadInput(f"clock {clock!r}: cpu (one thread only), wall or auto")
    now = time.thread_time if clock == "cpu" else time.perf_counter
    t0 = time.perf_counter()
    program(x)
    first = time.perf_counter() - t0
    for _ in range(warmup):
        program(x)
    times = []
    for _ in range(repeats):
        t0 = now()
        program(x)
        times.append(now() - t0)
    arr = np.array(times)
    return Timing(float(np.median(arr)), float(np.percentile(arr, 90)), float(arr.min()),
                  first, repeats, warmup, program.threads, os.getloadavg()[0], clock)
