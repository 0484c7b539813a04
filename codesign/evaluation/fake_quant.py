"""Simulated quantization ("fake quant") of a network at exactly the precisions an op list prices.

Weights (``quantize_weight``), per the layer's ``QuantSpec``:
- 32 bits: untouched; 16 bits: rounded through ``torch.float16``;
- 8 bits, and sub-byte with ``group_size == 0``: symmetric per output channel, integer levels
  ``[-2^(b-1), 2^(b-1)-1]``, scale ``max|w| / ((2^b - 1) / 2)`` (torchao's symmetric mapping);
- sub-byte with ``group_size > 0``: asymmetric (scale + zero point) per group of ``group_size``
  consecutive reduction weights of an output channel, levels ``[0, 2^b - 1]``, the scale rounded
  to fp16 (torchao's group-wise layout, which the IR prices as an fp16 scale + int8 zero point
  per group).
Activations: 8 bits = asymmetric per tensor, ``[0, 255]``, range from a min/max observer run on
training data (static, PT2E-style: observers see the float model), or per example at run time
when the op is ``dynamic_act``; 16 bits = fp16 round trip; 32 bits = untouched.

``OpListExecutor`` runs a network *from its op list*: every op of ``space.to_ops`` is executed
by name, with the module of that name (conv / linear weights), the fused activation the op
lists, and the op's precision. The output of every op is held at the op's activation precision;
a ``QUANTIZE`` boundary op re-quantizes its input to the precision of its readers;
``DEQUANTIZE`` is exact (a wider format holds every narrower value). So what is evaluated is
what is priced, op for op.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

import torch
import torch.nn.functional as F
from torch import nn

from codesign.cost_models.ir import Op, OpKind
from codesign.search_spaces.mbconv_supernet import trim_kernel
# re-exported: the numerics live beside the QAT trainer that shares them
from codesign.search_spaces.quant_numerics import (  # noqa: F401
    fake_quant_dynamic, fake_quant_per_token, fake_quant_symmetric, fake_quant_tensor,
    quantize_weight, symmetric_scale, weight_levels)

# in place: they only ever see a layer's freshly computed output
_ACT_FNS = {"relu": torch.relu_, "hardswish": lambda y: F.hardswish(y, inplace=True),
            "relu6": lambda y: F.relu6(y, inplace=True),
            "hardtanh": lambda y: F.hardtanh(y, inplace=True), "silu": lambda y: F.silu(y, True),
            "gelu": F.gelu, "sigmoid": torch.sigmoid_, "tanh": torch.tanh_,
            "hardsigmoid": lambda y: F.hardsigmoid(y, inplace=True)}


_KINDS = frozenset({OpKind.CONV2D, OpKind.DEPTHWISE_CONV2D, OpKind.LINEAR, OpKind.ADD, OpKind.MUL,
                    OpKind.GLOBAL_POOL, OpKind.QUANTIZE, OpKind.DEQUANTIZE, OpKind.FREE})


class MinMaxObserver:
    """Running min / max of every tensor it sees (the range of a static activation scale)."""

    def __init__(self) -> None:
        self.lo, self.hi = float("inf"), float("-inf")

    def observe(self, x: torch.Tensor) -> None:
        lo, hi = torch.aminmax(x)
        self.lo = min(self.lo, float(lo))
        self.hi = max(self.hi, float(hi))

    @property
    def ready(self) -> bool:
        return self.lo <= self.hi


class ActQuant:
    """How one tensor is held: ``bits`` (8/16/32), static (calibrated) or dynamic; a static
    int8 tensor ``symmetric`` (zero point 0: levels [-128, 127] x max|x| / 127.5, torchao's
    symmetric mapping) or with a zero point over its observed range."""

    def __init__(self, name: str, bits: int, dynamic: bool = False,
                 symmetric: bool = False) -> None:
        self.name, self.bits, self.dynamic, self.symmetric = name, bits, dynamic, symmetric
        self.observer = MinMaxObserver() if bits == 8 and not dynamic else None

    def __call__(self, x: torch.Tensor, calibrating: bool) -> torch.Tensor:
        if calibrating:  # observers see the float model (PT2E calibration)
            if self.observer is not None:
                self.observer.observe(x)
            return x
        if self.bits >= 32:
            return x
        if self.bits == 16:
            return x.half().float()
        if self.dynamic:
            return fake_quant_dynamic(x, self.bits)
        lo, hi = self.static_range()
        if self.symmetric:  # zero point exactly 0: the int8 grid an integer kernel holds
            return fake_quant_symmetric(x, hi, self.bits)
        return fake_quant_tensor(x, lo, hi, self.bits)

    def static_range(self) -> tuple[float, float]:
        """The (lo, hi) a static int8 tensor is quantized over (symmetric: -bound, bound)."""
        if self.observer is None or not self.observer.ready:
            raise RuntimeError(f"activation {self.name!r} is static int8 but was never "
                               "calibrated; call calibrate() first")
        if self.symmetric:
            bound = max(abs(self.observer.lo), abs(self.observer.hi))
            return -bound, bound
        return self.observer.lo, self.observer.hi


# ------------------------------------------------------------------------------ executor
class OpListExecutor:
    """Execute a model's op list with fake quantization (see the module docstring).

    ``model`` holds the layers by op name: ``nn.Conv2d`` for conv ops, whose BatchNorm (if the
    op fuses one) is the module ``{name}_bn``, and ``nn.Linear`` for linear ops.

    Life cycle: ``calibrate(batches)`` runs the float model (pruned weights as they are) with
    BatchNorm in training mode, its statistics reset and accumulated cumulatively over the
    batches (BN recalibration), while observers record the range of every static int8 tensor;
    ``freeze()`` folds each BatchNorm into its conv and fake-quantizes all weights; then
    ``__call__(x)`` runs the quantized network. With a single calibration batch the observed
    activations are those of the recalibrated float model (up to BatchNorm's n/(n-1) variance
    correction, n >= 4 x batch).

    Raises ValueError at construction when an op has no module of its name or lists a fused
    activation or an op kind the executor has no rule for.
    """

    def __init__(self, model: nn.Module, ops: Sequence[Op], *,
                 symmetric_int8: bool = False) -> None:
        self.model = model
        self.ops = list(ops)
        self.frozen = False
        self.symmetric_int8 = symmetric_int8
        # integer layers (see _integer): weight levels, accumulator scale s_x * s_w[c], bias
        self.int_layers: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]] = {}
        readers: dict[str, list[Op]] = {}
        for op in self.ops:
            for src in op.inputs:
                readers.setdefault(src, []).append(op)
        self.acts: dict[str, ActQuant] = {}
        self.layers: dict[str, tuple[nn.Module, nn.Module | None]] = {}
        self.weights: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        # BatchNorm folded in, before weight quantization: what an integer program packs
        self.folded: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        for op in self.ops:
            if op.kind not in _KINDS:
                raise ValueError(f"op {op.name}: the executor has no rule for {op.kind.value}")
            unknown = [f for f in op.fused if f != "batchnorm" and f not in _ACT_FNS]
            if unknown:
                raise ValueError(f"op {op.name}: no rule for fused {unknown[0]!r}")
            if op.kind in (OpKind.CONV2D, OpKind.DEPTHWISE_CONV2D, OpKind.LINEAR):
                module = self._module(op.name)
                bn = self._module(f"{op.name}_bn") if "batchnorm" in op.fused else None
                self.layers[op.name] = (module, bn)
            if op.kind is OpKind.QUANTIZE:
                outs = readers.get(op.name, [])
                if not outs:
                    raise ValueError(f"boundary op {op.name} has no reader")
                bits = min(r.quant.act_bits for r in outs)
                dynamic = all(r.quant.dynamic_act for r in outs)
                self.acts[op.name] = ActQuant(op.name, bits, dynamic, symmetric_int8)
            elif op.kind not in (OpKind.DEQUANTIZE, OpKind.FREE):
                self.acts[op.name] = ActQuant(op.name, op.quant.act_bits, op.quant.dynamic_act,
                                              symmetric_int8)
        # free each intermediate after its last reader (batches of hundreds of 64x64 maps)
        self.last_use: dict[str, int] = {}
        for i, op in enumerate(self.ops):
            for src in op.inputs:
                self.last_use[src] = i

    def _module(self, name: str) -> nn.Module:
        try:
            return self.model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"op {name} has no module of that name in the model") from None

    # -------------------------------------------------------------- phases
    @torch.no_grad()
    def calibrate(self, batches: Iterable[torch.Tensor]) -> None:
        """Recalibrate BatchNorm statistics and observe activation ranges (see class doc)."""
        if self.frozen:
            raise RuntimeError("calibrate() after freeze()")
        bns = [bn for _, bn in self.layers.values() if bn is not None]
        momenta = [bn.momentum for bn in bns]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over all calibration batches
            bn.train()
        try:
            for x in batches:
                self._run(x, calibrating=True)
        finally:
            for bn, momentum in zip(bns, momenta):
                bn.momentum = momentum
                bn.eval()

    @torch.no_grad()
    def freeze(self) -> None:
        """Fold BatchNorm into the layers and fake-quantize their weights (once)."""
        for op in self.ops:
            if op.name not in self.layers:
                continue
            module, bn = self.layers[op.name]
            w = module.weight.detach().float()
            b = module.bias.detach().float() if module.bias is not None else None
            if bn is not None:
                inv = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                w = w * inv.reshape((-1,) + (1,) * (w.dim() - 1))
                b = bn.bias - bn.running_mean * inv + (b * inv if b is not None else 0.0)
            self.folded[op.name] = (w, b)
            wq = quantize_weight(w, op.quant)
            if wq.dim() == 4:
                wq = wq.contiguous(memory_format=torch.channels_last)
            self.weights[op.name] = (wq, b)
            s_in = self.input_scale(op)
            if s_in is not None:
                levels, s_w = weight_levels(w, op.quant.weight_bits)
                levels = levels.reshape(w.shape)
                if levels.dim() == 4:
                    levels = levels.contiguous(memory_format=torch.channels_last)
                # both factors as the float32 the fake-quantized values carry, the product
                # rounded once to float32
                acc_scale = (float(np.float32(s_in)) * s_w.reshape(-1).double()).float()
                bias = b.detach().float() if b is not None else torch.zeros(w.shape[0])
                self.int_layers[op.name] = (levels, acc_scale, bias, s_in)
        self.frozen = True

    def input_scale(self, op: Op) -> float | None:
        """The step of the int8 levels ``op`` reads when it runs as an integer layer, else None.

        Integer layers (symmetric int8 activations, per-channel weights below 32 bits, static
        int8 input and output): the convolution runs over the input's and the weight's integer
        levels (exact in float32 while partial sums stay below 2^24: |x w| <= 2^14) and the
        result is scaled by ``s_x * s_w[c]`` and biased - what an integer kernel computes
        (exact int32 accumulation, then requantisation). Accumulating the fake-quantized float
        values instead rounds every product and partial sum, which no integer kernel does, and
        moved about one output level in 10^3 by a step."""
        q = op.quant
        if not (self.symmetric_int8 and op.name in self.layers and q.weight_bits < 32
                and q.act_bits == 8 and not q.dynamic_act and not q.group_size):
            return None
        return self.static_scale(op.inputs[0])

    def static_scale(self, name: str) -> float | None:
        """The step of value ``name`` when it is a static symmetric int8 tensor, else None."""
        act = self.acts.get(name)
        if act is None or act.bits != 8 or act.dynamic or not act.symmetric:
            return None
        return symmetric_scale(act.static_range()[1], 8)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.frozen:
            raise RuntimeError("call freeze() (after calibrate()) before running the executor")
        return self._run(x, calibrating=False)

    # -------------------------------------------------------------- interpreter
    def _run(self, x: torch.Tensor, *, calibrating: bool) -> torch.Tensor:
        if x.dim() == 4:  # channels-last: CPU depthwise convolutions run several times faster
            x = x.contiguous(memory_format=torch.channels_last)
        values: dict[str, torch.Tensor] = {"": x}
        out = x
        for i, op in enumerate(self.ops):
            args = [values[s] for s in op.inputs]
            out = self._op(op, args, calibrating)
            if op.name in self.acts:
                out = self.acts[op.name](out, calibrating)
            values[op.name] = out
            for s in set(op.inputs):
                if self.last_use.get(s) == i:
                    del values[s]
        return out

    def _op(self, op: Op, args: list[torch.Tensor], calibrating: bool) -> torch.Tensor:
        kind = op.kind
        if kind in (OpKind.CONV2D, OpKind.DEPTHWISE_CONV2D, OpKind.LINEAR):
            module, bn = self.layers[op.name]
            if calibrating:
                y = module(args[0])
                if bn is not None:
                    y = bn(y)
            elif op.name in self.int_layers:
                y = self._integer_layer(op, module, args[0])
            else:
                w, b = self.weights[op.name]
                if kind is OpKind.LINEAR:
                    y = F.linear(args[0], w, b)
                else:
                    k = w.shape[-1]
                    if module.padding == (k // 2, k // 2) and module.stride[0] == module.stride[1]:
                        w = trim_kernel(w, module.stride[0], args[0].shape[-2:])  # exact
                        y = F.conv2d(args[0], w, b, module.stride, w.shape[-1] // 2, 1,
                                     module.groups)
                    else:
                        y = F.conv2d(args[0], w, b, module.stride, module.padding,
                                     module.dilation, module.groups)
            for label in op.fused:
                if label != "batchnorm":
                    y = _ACT_FNS[label](y)
            return y
        if kind is OpKind.ADD:
            return args[0] + args[1]
        if kind is OpKind.MUL:
            return args[0] * args[1]
        if kind is OpKind.GLOBAL_POOL:
            dims = tuple(range(2, args[0].dim()))
            step = None if calibrating else self.static_scale(op.inputs[0])
            if step is None or op.quant.act_bits != 8:
                return args[0].mean(dim=dims)
            # an int8 map: the exact sum of its levels, scaled, then divided by the pixel count
            # (float32 sums of the float values depend on the summation order)
            levels = args[0].mul(1.0 / step).round_()
            count = math.prod(args[0].shape[2:])
            return levels.sum(dim=dims).mul_(torch.tensor(step, dtype=torch.float32)).div_(count)
        return args[0]  # QUANTIZE (its ActQuant does the work), DEQUANTIZE (exact), FREE

    def _integer_layer(self, op: Op, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """An integer layer (``input_scale``): levels in, ``acc * s_x * s_w + b`` out."""
        levels, acc_scale, bias, s_in = self.int_layers[op.name]
        xq = x.mul(1.0 / s_in).round_()  # the input's levels, exactly (|error| << 0.5)
        if op.kind is OpKind.LINEAR:
            acc = F.linear(xq, levels)
            shape = (1, -1)
        else:
            k = levels.shape[-1]
            if module.padding == (k // 2, k // 2) and module.stride[0] == module.stride[1]:
                levels = trim_kernel(levels, module.stride[0], xq.shape[-2:])
                acc = F.conv2d(xq, levels, None, module.stride, levels.shape[-1] // 2, 1,
                               module.groups)
            else:
                acc = F.conv2d(xq, levels, None, module.stride, module.padding, module.dilation,
                               module.groups)
            shape = (1, -1, 1, 1)
        # two roundings (multiply, then add), as the integer kernel's epilogue
        return acc.mul_(acc_scale.reshape(shape)).add_(bias.reshape(shape))
