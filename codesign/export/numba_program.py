"""Build a ``numba`` program: a codesign member as a layer plan plus packed weights.

The program is built from the very model the search scored: the calibrated, BatchNorm-folded,
fake-quantized ``OpListExecutor`` of the member (``codesign.evaluation.fake_quant``). Per op of
the member's op list (deploy shape, tiles resolved as priced):

* int8 layers (``w8a8`` / ``w4a8``): the folded weight's integer levels and per-channel scales
  (``quant_numerics.weight_levels``, the function ``quantize_weight`` itself uses, checked bit
  for bit against the executor's fake-quantized weight), packed for the integer kernels (int8
  k-pairs, int4 nibbles); the float32 bias; the per-channel accumulator scale ``s_x * s_w[c]``;
  the fused activation; the output's static scale (the executor's observer, symmetric);
* fp32 layers: HWIO / (K, N) float32 weights, or the sparse format of the layer's pattern
  (2:4 compressed, BSR 4x4, CSR) built from the pruned weights;
* residual adds, global pooling, quantize / dequantize at the precision boundaries.

Files (``PROGRAM_FORMAT``): ``program.json`` (the plan: per layer op, inputs, NHWC shapes,
format, kernel, tile chosen and tile run, quantization parameters, fused activation) and
``weights.safetensors`` (every array, named ``<layer>/<role>``), read by
``codesign.export.numba_runtime``; no pickles.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from codesign.cost_models.ir import Op, OpKind
from codesign.kernels.specs import SparsityPattern, TileSpec
from codesign.search_spaces.mbconv_supernet import trim_kernel
from codesign.search_spaces.quant_numerics import symmetric_scale, weight_levels

from codesign.export.numba_runtime import PROGRAM_FILE, PROGRAM_FORMAT, WEIGHTS_FILE  # noqa: F401
_ACTS = ("relu", "hardswish", "relu6")


def _tile_json(tile: TileSpec | None) -> dict[str, int] | None:
    return None if tile is None else {k: getattr(tile, k) for k in ("mc", "nc", "kc", "mr", "nr")}


def run_tile(tile: TileSpec | None, kind: str) -> tuple[TileSpec, str]:
    """The tile a layer's kernel runs: the chosen one where the kernel has its micro-tile, else
    the kernel's default micro-tile with the chosen cache blocks, and why."""
    from codesign.kernels.gemm_f32 import DEFAULT_TILE, SUPPORTED_MICRO_TILES
    from codesign.kernels.gemm_int8 import (DEFAULT_INT_TILE, SUPPORTED_I4_MICRO_TILES,
                                            SUPPORTED_I8_MICRO_TILES)

    default, micro = {"fp32": (DEFAULT_TILE, SUPPORTED_MICRO_TILES),
                      "int8": (DEFAULT_INT_TILE, SUPPORTED_I8_MICRO_TILES),
                      "int4": (DEFAULT_INT_TILE, SUPPORTED_I4_MICRO_TILES)}[kind]
    if tile is None:
        return default, ""
    if (tile.mr, tile.nr) in micro and (kind == "fp32" or tile.kc % 2 == 0):
        return tile, ""
    kc = tile.kc + (tile.kc % 2 if kind != "fp32" else 0)
    mr, nr = default.mr, default.nr  # cache blocks rounded up to whole micro-tiles
    ran = TileSpec(mc=-(-tile.mc // mr) * mr, nc=-(-tile.nc // nr) * nr, kc=kc, mr=mr, nr=nr)
    return ran, (f"the {kind} kernel has no {tile.mr}x{tile.nr} micro-tile: runs "
                 f"{default.mr}x{default.nr} with the chosen cache blocks")


def _nhwc(shape) -> list[int]:
    return [shape[0], shape[2], shape[3], shape[1]] if len(shape) == 4 else list(shape)


class _Builder:
    def __init__(self, executor, ops: list[Op]) -> None:
        self.ex = executor
        self.ops = ops
        self.tensors: dict[str, np.ndarray] = {}
        # value name -> {"dtype", "scale"} (the model input "" arrives as float32)
        self.values: dict[str, dict[str, Any]] = {"": {"dtype": "float32", "scale": None}}

    def put(self, name: str, array: np.ndarray) -> str:
        self.tensors[name] = np.ascontiguousarray(array)
        return name

    def out_scale(self, name: str) -> float:
        lo, hi = self.ex.acts[name].static_range()
        return symmetric_scale(max(abs(lo), abs(hi)))

    def value(self, op: Op, dtype: str) -> dict[str, Any]:
        entry = {"dtype": dtype, "scale": self.out_scale(op.name) if dtype == "int8" else None}
        self.values[op.name] = entry
        return entry

    def source(self, name: str, want: str | None = None) -> dict[str, Any]:
        src = self.values[name]
        if want is not None and src["dtype"] != want:
            raise ValueError(f"value {name or 'input'!r} is {src['dtype']}, a reader wants {want}")
        return src

    # ------------------------------------------------------------------ layers
    def layer(self, op: Op) -> dict[str, Any]:
        module, _ = self.ex.layers[op.name]
        w, b = self.ex.folded[op.name]
        q = op.quant
        act = [f for f in op.fused if f != "batchnorm"]
        if any(a not in _ACTS for a in act) or len(act) > 1:
            raise ValueError(f"{op.name}: no epilogue for fused {act}")
        int8 = q.weight_bits < 32
        if int8 and (q.act_bits != 8 or q.dynamic_act or q.group_size or q.weight_bits not in (4, 8)):
            raise ValueError(f"{op.name}: no integer kernel for {q} (static int8 activations "
                             "with per-channel int8/int4 weights only)")
        if not int8 and q.act_bits != 32:
            raise ValueError(f"{op.name}: fp32 weights with {q.act_bits}-bit activations")
        src = self.source(op.inputs[0], "int8" if int8 else "float32")
        entry: dict[str, Any] = {
            "name": op.name, "op": op.kind.value, "inputs": list(op.inputs),
            "in_shape": _nhwc(op.in_shapes[0]), "out_shape": _nhwc(op.out_shape),
            "act": act[0] if act else None, "in_dtype": src["dtype"], "in_scale": src["scale"]}
        bias = (b if b is not None else torch.zeros(w.shape[0])).detach().float().numpy()
        entry["bias"] = self.put(f"{op.name}/bias", bias.astype(np.float32))
        if op.kind is OpKind.LINEAR:
            self._matrix_weights(op, entry, w.reshape(w.shape[0], -1), int8, src)
        else:
            self._conv_weights(op, module, entry, w, int8, src)
        out = self.value(op, "int8" if int8 else "float32")
        entry.update(out_dtype=out["dtype"], out_scale=out["scale"])
        return entry

    def _levels(self, op: Op, w: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        levels, scale = weight_levels(w, op.quant.weight_bits)
        wq = self.ex.weights[op.name][0]
        if not torch.equal(levels * scale, wq.reshape(levels.shape)):
            raise ValueError(f"{op.name}: integer levels x scales differ from the scored weights")
        return levels.to(torch.int8).numpy(), scale.reshape(-1).double().numpy()

    def _acc_scale(self, op: Op, entry: dict, src: dict, s_w: np.ndarray) -> None:
        # the real value of an accumulator, s_x * s_w[c]: the scored model's own (its integer
        # layers run the same epilogue, codesign.evaluation.fake_quant)
        if op.name not in self.ex.int_layers:
            raise ValueError(f"{op.name}: the scored model does not run it as an integer layer")
        _, acc_scale, bias, s_in = self.ex.int_layers[op.name]
        if s_in != src["scale"]:
            raise ValueError(f"{op.name}: input step {src['scale']} differs from the scored "
                             f"model's {s_in}")
        entry["acc_scale"] = self.put(f"{op.name}/acc_scale", acc_scale.numpy())

    def _matrix_weights(self, op: Op, entry: dict, w2: torch.Tensor, int8: bool,
                        src: dict) -> None:
        """A (K, N) GEMM weight: linear layers and 1x1 stride-1 convs."""
        from codesign.kernels.gemm_int8 import pack_weights_int4, pack_weights_int8

        entry["gemm"] = {"k": int(w2.shape[1]), "n": int(w2.shape[0])}
        if int8:
            levels, s_w = self._levels(op, w2)
            kind = "int4" if op.quant.weight_bits == 4 else "int8"
            tile, note = run_tile(op.tile, kind)
            pack = pack_weights_int4 if kind == "int4" else pack_weights_int8
            packed = pack(np.ascontiguousarray(levels.reshape(w2.shape).T), tile.nr)
            entry.update(format=f"w{op.quant.weight_bits}a8", kernel=(
                "codesign.kernels.gemm_int8.gemm_i8_i32" if op.kind is OpKind.LINEAR else
                "codesign.kernels.conv_int8.conv2d_int8"),
                weights={"packed": self.put(f"{op.name}/packed", packed.data),
                         "bits": op.quant.weight_bits, "nr": tile.nr})
            self._acc_scale(op, entry, src, s_w)
            entry.update(tile=_tile_json(op.tile), tile_run=_tile_json(tile), tile_note=note)
            return
        wkn = np.ascontiguousarray(w2.detach().float().numpy().T)
        pattern = op.sparsity.pattern
        if pattern is SparsityPattern.DENSE:
            tile, note = run_tile(op.tile, "fp32")
            entry.update(format="fp32", kernel=("codesign.kernels.gemm_f32.gemm_f32"
                                                if op.kind is OpKind.LINEAR else
                                                "codesign.kernels.conv.conv2d"),
                         weights={"w": self.put(f"{op.name}/w", wkn)},
                         tile=_tile_json(op.tile), tile_run=_tile_json(tile), tile_note=note)
            return
        from codesign.kernels.sparse_formats import compress_nm, to_bsr, to_csr

        sp = op.sparsity
        if pattern is SparsityPattern.N_M:
            nm = compress_nm(wkn, sp.n, sp.m)
            if not np.array_equal(nm.to_dense()[:wkn.shape[0]], wkn):
                raise ValueError(f"{op.name}: the pruned weights are not {sp.n}:{sp.m}")
            weights = {"values": self.put(f"{op.name}/values", nm.values),
                       "meta": self.put(f"{op.name}/meta", nm.meta), "n": sp.n, "m": sp.m}
            fmt, kernel = f"fp32+{sp.n}:{sp.m}", "codesign.kernels.sparse.spmm_nm"
        elif pattern is SparsityPattern.BLOCK:
            bsr = to_bsr(wkn, sp.block_rows, sp.block_cols)
            weights = {"indptr": self.put(f"{op.name}/indptr", bsr.indptr),
                       "indices": self.put(f"{op.name}/indices", bsr.indices),
                       "data": self.put(f"{op.name}/data", bsr.data)}
            fmt, kernel = f"fp32+block{sp.block_rows}x{sp.block_cols}", \
                "codesign.kernels.sparse.spmm_bsr"
        else:
            csr = to_csr(wkn)
            weights = {"indptr": self.put(f"{op.name}/indptr", csr.indptr),
                       "indices": self.put(f"{op.name}/indices", csr.indices),
                       "data": self.put(f"{op.name}/data", csr.data)}
            fmt, kernel = "fp32+csr", "codesign.kernels.sparse.spmm_csr"
        entry.update(format=fmt, kernel=kernel, weights=weights, tile=_tile_json(op.tile),
                     tile_run=None, tile_note="sparse kernels block by format, not by tile")

    def _conv_weights(self, op: Op, module, entry: dict, w: torch.Tensor, int8: bool,
                      src: dict) -> None:
        stride, pad = int(module.stride[0]), int(module.padding[0])
        k = int(w.shape[-1])
        depthwise = op.kind is OpKind.DEPTHWISE_CONV2D

        def trim(t: torch.Tensor) -> torch.Tensor:
            return t

        if depthwise and stride == 1 and pad == k // 2:
            # taps that only ever read the zero padding of this map are dropped (exact; the
            # fake-quantized model does the same)
            def trim(t: torch.Tensor) -> torch.Tensor:  # noqa: F811
                return trim_kernel(t, 1, op.in_shapes[0][2:])

            k = int(trim(w).shape[-1])
            pad = k // 2
        entry.update(stride=stride, pad=pad, kernel_size=k)
        if not depthwise and k == 1 and stride == 1 and pad == 0:
            self._matrix_weights(op, entry, w.reshape(w.shape[0], -1), int8, src)
            return
        if op.sparsity.pattern is not SparsityPattern.DENSE:
            raise ValueError(f"{op.name}: a sparse {k}x{k} conv has no kernel (sparse kernels "
                             "run 1x1 convs and linears)")
        if int8:
            levels, s_w = self._levels(op, w)
            levels = torch.from_numpy(levels).reshape(w.shape)
            self._acc_scale(op, entry, src, s_w)
            bits = op.quant.weight_bits
            entry["format"] = f"w{bits}a8"
            if depthwise:
                kern = trim(levels)[:, 0]
                khwc = np.ascontiguousarray(kern.permute(1, 2, 0).numpy())
                if bits == 4:
                    from codesign.kernels.conv_int8 import pack_depthwise_weights_int4

                    data = pack_depthwise_weights_int4(khwc).data
                else:
                    data = khwc
                entry.update(kernel="codesign.kernels.conv_int8.depthwise_conv2d_int8",
                             weights={"w": self.put(f"{op.name}/w", data), "bits": bits},
                             tile=None, tile_run=None, tile_note="")
                return
            from codesign.kernels.conv_int8 import pack_conv_weights

            tile, note = run_tile(op.tile, "int4" if bits == 4 else "int8")
            hwio = np.ascontiguousarray(levels.permute(2, 3, 1, 0).numpy())
            packed = pack_conv_weights(hwio, bits, tile.nr)
            entry.update(kernel="codesign.kernels.conv_int8.conv2d_int8",
                         weights={"packed": self.put(f"{op.name}/packed", packed.gemm.data),
                                  "bits": bits, "nr": tile.nr, "kh": k, "kw": k,
                                  "c_in": int(w.shape[1])},
                         tile=_tile_json(op.tile), tile_run=_tile_json(tile), tile_note=note)
            return
        wf = w.detach().float()
        if depthwise:
            wf = trim(wf)
            entry.update(format="fp32", kernel="codesign.kernels.conv.depthwise_conv2d",
                         weights={"w": self.put(f"{op.name}/w", wf[:, 0].permute(1, 2, 0).numpy())},
                         tile=None, tile_run=None, tile_note="")
            return
        tile, note = run_tile(op.tile, "fp32")
        entry.update(format="fp32", kernel="codesign.kernels.conv.conv2d",
                     weights={"w": self.put(f"{op.name}/w", wf.permute(2, 3, 1, 0).numpy())},
                     tile=_tile_json(op.tile), tile_run=_tile_json(tile), tile_note=note)

    # ------------------------------------------------------------------ the rest
    def other(self, op: Op) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": op.name, "op": op.kind.value, "inputs": list(op.inputs),
                                 "out_shape": _nhwc(op.out_shape)}
        bits = op.quant.act_bits
        if op.kind is OpKind.QUANTIZE:
            self.source(op.inputs[0], "float32")
            if self.ex.acts[op.name].bits != 8:
                raise ValueError(f"{op.name}: quantize to {self.ex.acts[op.name].bits} bits")
            out = self.value(op, "int8")
        elif op.kind is OpKind.DEQUANTIZE:
            entry["in_scale"] = self.source(op.inputs[0], "int8")["scale"]
            out = self.value(op, "float32")
        elif op.kind in (OpKind.ADD, OpKind.GLOBAL_POOL):
            dtype = "int8" if bits == 8 else "float32"
            if bits not in (8, 32):
                raise ValueError(f"{op.name}: {bits}-bit activations")
            entry["in_scales"] = [self.source(s, dtype)["scale"] for s in op.inputs]
            out = self.value(op, dtype)
        elif op.kind is OpKind.FREE:
            self.values[op.name] = out = dict(self.source(op.inputs[0]))
        else:
            raise ValueError(f"{op.name}: no runtime rule for {op.kind.value}")
        entry.update(out_dtype=out["dtype"], out_scale=out["scale"])
        return entry


def build_program(executor, ops: list[Op], input_shape, meta: dict[str, Any]
                  ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(plan, tensors)`` of the member ``executor`` scores, over ``ops`` (its op list at
    ``input_shape``, tiles resolved). Raises ValueError for a layer no kernel runs."""
    if not executor.frozen:
        raise ValueError("the executor must be calibrated and frozen")
    builder = _Builder(executor, list(ops))
    layers = []
    for op in builder.ops:
        if op.kind in (OpKind.CONV2D, OpKind.DEPTHWISE_CONV2D, OpKind.LINEAR):
            layers.append(builder.layer(op))
        else:
            layers.append(builder.other(op))
    last = layers[-1]
    if last["out_dtype"] != "float32":
        raise ValueError("the program's output is not float32")
    plan = {"format": PROGRAM_FORMAT, **meta, "input_shape": list(input_shape),
            "input_layout": "NCHW float32 (converted to NHWC once)",
            "output": last["name"], "output_shape": last["out_shape"], "layers": layers}
    return plan, builder.tensors
