"""Lower PyTorch modules to ExecuTorch ``.pte`` programs delegated to XNNPACK.

The pipeline is the standard ExecuTorch 1.5 one:

* fp32: ``torch.export`` -> ``to_edge_transform_and_lower(XnnpackPartitioner)``
  -> ``to_executorch`` -> serialized buffer.
* int8: ``torch.export`` -> PT2E ``prepare_pt2e`` with an ``XNNPACKQuantizer``
  (symmetric, per-channel weights, per-tensor activations) -> calibration ->
  ``convert_pt2e`` -> re-export -> the fp32 lowering path. XNNPACK fuses the
  resulting dequant/op/quant patterns into its quantized kernels.

``torch.ao.quantization.quantize_pt2e`` no longer exists in torch 2.13; the
PT2E entry points now live in ``torchao.quantization.pt2e``.

Heavy imports (executorch, torchao: several seconds) happen on first use, so
importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "PRECISIONS",
    "PlannedMemory",
    "lower_to_pte",
    "lower_exported",
    "planned_memory",
    "delegate_backends",
    "undelegated_operators",
    "quiet_imports",
]

#: Precisions :func:`lower_to_pte` accepts.
PRECISIONS: tuple[str, ...] = ("fp32", "int8")

# Loggers that print harmless noise on import of torchao/executorch on a CPU
# host: torchao reports its CUDA-only extension libraries as "failed to load",
# and torch's pytree warns about an enum registration torchao still performs.
_NOISY_LOGGERS = ("torchao", "torch.utils._pytree")


@contextlib.contextmanager
def quiet_imports() -> Iterator[None]:
    """Silence import-time noise of executorch/torchao (restored afterwards).

    Raises the noisy loggers to ERROR and drops the warnings their imports
    emit: executorch's "experimental API" notice for its runtime bindings and
    deprecation notices from its use of ``importlib.resources``.
    """
    saved = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="This API is experimental")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Silence deprecation chatter emitted from inside torch.export/EXIR.

    copyreg warns about ``LeafSpec`` every time an exported graph is deep
    copied; it is internal to torch and says nothing about the caller's model.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode, then restore each one's own flag.

    Lowering must capture inference semantics (batchnorm running stats,
    dropout off), but the caller's module should come back unchanged;
    ``module.train(old)`` would flatten per-submodule flags, so save them all.
    """
    saved = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, flag in saved:
            m.training = flag


def _check_inputs(example_inputs: tuple, what: str) -> tuple:
    if not isinstance(example_inputs, tuple) or not example_inputs:
        raise TypeError(f"{what} must be a non-empty tuple of tensors, got {type(example_inputs).__name__}")
    for i, x in enumerate(example_inputs):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{what}[{i}] must be a torch.Tensor, got {type(x).__name__}")
    return example_inputs


def _quantize_int8(
    module: torch.nn.Module,
    example_inputs: tuple,
    calibration_inputs: Sequence[tuple],
) -> torch.export.ExportedProgram:
    """PT2E int8 quantization for XNNPACK; returns the re-exported program."""
    with quiet_imports():
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    # prepare_pt2e wants the GraphModule view of an exported program.
    graph_module = torch.export.export(module, example_inputs).module()
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(graph_module, quantizer)
    with torch.no_grad():
        for batch in calibration_inputs:
            prepared(*batch)
    converted = convert_pt2e(prepared)
    return torch.export.export(converted, example_inputs)


def lower_to_pte(
    module: torch.nn.Module,
    example_inputs: tuple,
    *,
    precision: str = "fp32",
    calibration_inputs: list[tuple] | None = None,
) -> bytes:
    """Lower ``module`` to a serialized ExecuTorch program delegated to XNNPACK.

    The module is exported in eval mode (batchnorm uses running statistics,
    dropout is off); its train/eval flags are restored afterwards. Static
    shapes only: the program accepts exactly the shapes of ``example_inputs``.

    Args:
        module: Model to lower. Its forward must be ``torch.export``-able.
        example_inputs: Tuple of tensors fixing the input shapes and dtypes.
        precision: ``"fp32"`` (float weights and activations) or ``"int8"``
            (PT2E static quantization: symmetric per-channel int8 weights,
            int8 activations).
        calibration_inputs: int8 only: batches (tuples shaped like
            ``example_inputs``) run through the observed model to set
            activation ranges. ``None`` calibrates on ``example_inputs``
            alone, which is enough for latency work but gives poor accuracy.
            Ignored for fp32.

    Returns:
        The ``.pte`` file contents.

    Raises:
        ValueError: if ``precision`` is not one of :data:`PRECISIONS`, or if
            ``calibration_inputs`` is an empty list.
        TypeError: if ``example_inputs`` is not a non-empty tuple of tensors.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unsupported precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    _check_inputs(example_inputs, "example_inputs")
    if calibration_inputs is not None:
        if precision == "int8" and len(calibration_inputs) == 0:
            raise ValueError("calibration_inputs must hold at least one batch (or be None)")
        for j, batch in enumerate(calibration_inputs):
            _check_inputs(batch, f"calibration_inputs[{j}]")

    with _eval_mode(module), _quiet_export(), torch.no_grad():
        if precision == "int8":
            batches = calibration_inputs if calibration_inputs is not None else [example_inputs]
            exported = _quantize_int8(module, example_inputs, batches)
        else:
            exported = torch.export.export(module, example_inputs)
        return lower_exported(exported)


def lower_exported(exported: torch.export.ExportedProgram, *,
                   dynamic_linears_first: bool = False) -> bytes:
    """An exported program (float, or PT2E-converted / torchao-quantized) lowered to a ``.pte``
    delegated to XNNPACK; XNNPACK fuses the dequant/op/quant patterns into its kernels.
    ``dynamic_linears_first``: the dynamically-quantized-linear partitioner before the general
    one (ExecuTorch's LLM recipe with ``--xnnpack-extended-ops``)."""
    with quiet_imports():
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
            XnnpackDynamicallyQuantizedPartitioner, XnnpackPartitioner)
        from executorch.exir import to_edge_transform_and_lower

    partitioners = [XnnpackPartitioner()]
    if dynamic_linears_first:
        partitioners.insert(0, XnnpackDynamicallyQuantizedPartitioner())
    with _quiet_export():
        edge = to_edge_transform_and_lower(exported, partitioner=partitioners)
        program = edge.to_executorch()
        return bytes(program.buffer)


@dataclass(frozen=True)
class PlannedMemory:
    """Memory an ExecuTorch program declares, in bytes.

    Attributes:
        constant_bytes: Serialized constant payload: constant tensors, named
            data (where XNNPACK puts weights) and delegate blobs. The delegate
            may repack weights at load time, so resident memory can exceed
            this.
        non_constant_bytes: Memory-planned arena for activations and other
            mutable tensors of the method (sum of its non-constant buffers).
            Scratch memory a delegate allocates internally is not included.
    """

    constant_bytes: int
    non_constant_bytes: int

    @property
    def total_bytes(self) -> int:
        """``constant_bytes + non_constant_bytes``."""
        return self.constant_bytes + self.non_constant_bytes


def _parse_program(pte: bytes):
    """Flatbuffer header of a .pte as an ``executorch.exir.schema.Program``.

    Only the flatbuffer is decoded; segment payloads are left in place and
    accounted by their declared sizes, which avoids copying weights.
    """
    if not isinstance(pte, (bytes, bytearray, memoryview)) or len(pte) == 0:
        raise ValueError("pte must be non-empty bytes")
    # Private module, but the only Python parser of the format in 1.5.1.
    from executorch.exir._serialize._flatbuffer_program import _flatbuffer_to_program
    from executorch.exir._serialize._program import _get_extended_header

    data = bytes(pte)
    header = _get_extended_header(data)
    size = header.program_size if header is not None and header.is_valid() else len(data)
    return _flatbuffer_to_program(data[:size])


def planned_memory(pte: bytes, method: str = "forward") -> PlannedMemory:
    """Planned memory of one method of a serialized program.

    Args:
        pte: ``.pte`` file contents, e.g. from :func:`lower_to_pte`.
        method: Method (execution plan) name.

    Returns:
        The constant and memory-planned sizes in bytes.

    Raises:
        ValueError: if the bytes are empty or the method does not exist.
    """
    program = _parse_program(pte)
    plans = {plan.name: plan for plan in program.execution_plan}
    if method not in plans:
        raise ValueError(f"no method {method!r} in program; methods: {sorted(plans)}")
    # Buffer id 0 is reserved for constants; its recorded size is meaningless.
    non_constant = sum(int(s) for s in plans[method].non_const_buffer_sizes[1:])
    constant = sum(int(seg.size) for seg in program.segments)
    constant += sum(len(buf.storage) for buf in program.constant_buffer)
    constant += sum(len(blob.data) for blob in program.backend_delegate_data)
    return PlannedMemory(constant_bytes=constant, non_constant_bytes=non_constant)


def delegate_backends(pte: bytes) -> tuple[str, ...]:
    """Sorted, de-duplicated backend ids the program delegates to.

    Args:
        pte: ``.pte`` file contents.

    Returns:
        E.g. ``("XnnpackBackend",)``; empty when everything runs on portable
        kernels.
    """
    program = _parse_program(pte)
    return tuple(sorted({d.id for plan in program.execution_plan for d in plan.delegates}))


def undelegated_operators(pte: bytes, method: str = "forward") -> tuple[str, ...]:
    """Operators a method runs outside any delegate (portable/optimized kernels).

    A model meant to run on XNNPACK should come back with few or none of
    these; each one is a graph break with its own dispatch and memory copies.

    Args:
        pte: ``.pte`` file contents.
        method: Method (execution plan) name.

    Returns:
        Operator names such as ``"aten::max_pool2d_with_indices.out"``, in
        program order.

    Raises:
        ValueError: if the method does not exist.
    """
    program = _parse_program(pte)
    plans = {plan.name: plan for plan in program.execution_plan}
    if method not in plans:
        raise ValueError(f"no method {method!r} in program; methods: {sorted(plans)}")
    return tuple(f"{op.name}.{op.overload}" if op.overload else op.name for op in plans[method].operators)
