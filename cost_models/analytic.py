"""The analytic roofline model: per op, compute vs memory vs dispatch, from the device spec.

For each op (vectorised over an ``OpBatch``):
- **compute**: FLOPs / (peak of the cores the op can keep busy x back-end efficiency x register
  micro-kernel efficiency x edge-tile utilisation x sparse-kernel efficiency). Peak is summed over
  the cores the thread count uses (``CpuSpec.cores_for_threads``), so spilling onto little cores
  adds only their small peak, and an op with fewer parallel work units than threads uses fewer.
  The micro-kernel efficiency follows from the tile and the core: FMA issue vs load ports vs FMA
  latency, and register spills.
- **memory**: bytes / bandwidth, with the traffic of a GotoBLAS-style blocked GEMM (A re-read
  once per nc panel, C once per kc block) when its operands exceed the caches, and cache
  bandwidth when the working set fits. Weights (and the KV cache, streamed like weights) that
  stay in the LLC are re-read every inference: where the device has a measured read bandwidth
  by working set (``host``: ``codesign.cost_models.host.cache_read_curve``) they stream at that
  bandwidth for the model's weight + KV bytes, else at the cache bandwidth per cycle.
- **overhead**: the back-end's dispatch cost per op, plus a fork-join barrier when it runs on
  more than one thread.
latency = max(compute, memory) + overhead; the bound is the largest of the three terms.

On ``host`` with the ``codesign`` back-end, a tile term calibrated on this machine's kernels
(``cost_models/tile_calibration.py``, loaded when ``configs/tile_terms/<fingerprint>.json``
exists) replaces the derived compute term of dense GEMM ops.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from codesign.cost_models.backends import BackendSpec, backend_for
from codesign.cost_models.base import CostModel, Prediction, UnpriceableOp
from codesign.cost_models.devices import DeviceSpec, load_device
from codesign.cost_models.ir import (DTYPE_CODES, GEMM_KINDS, KIND_CODES, KINDS_BY_CODE,
                                     PATTERN_CODES, PRICED_FREE_KINDS, OpBatch, OpKind,
                                     runtime_op_code)
from codesign.cost_models.tile_calibration import TileTerms, terms_for
from codesign.kernels.specs import QuantSpec, SparsityPattern, SparsitySpec

FORMAT_VERSION = 1
_DTYPES = list(DTYPE_CODES)
_TILED = np.array([k in GEMM_KINDS and k is not OpKind.DEPTHWISE_CONV2D for k in OpKind])
_FREE = np.array([k in PRICED_FREE_KINDS for k in OpKind])


@dataclass(frozen=True)
class CacheTerms:
    """Memory-hierarchy terms not on a spec sheet. Estimates, calibrated on measured kernels.

    Attributes:
        cache_bytes_per_cycle: bytes per cycle per core the L2/L3 deliver to a streaming kernel.
        dram_share_per_core: fraction of a core's load-port bandwidth it can draw from DRAM
            (outstanding-miss limits), capping one core's DRAM bandwidth.
        l1_spill_efficiency: micro-kernel efficiency when its A and B slivers overflow L1.
        l2_spill_efficiency: efficiency when the packed A block (mc x kc) overflows L2.
        work_unit_elems: elements one thread takes per parallel work unit (non-GEMM ops).
    """

    cache_bytes_per_cycle: float = 32.0
    dram_share_per_core: float = 0.25
    l1_spill_efficiency: float = 0.75
    l2_spill_efficiency: float = 0.85
    work_unit_elems: float = 4096.0


class AnalyticCostModel(CostModel):
    """Roofline pricing on ``device`` through ``backend`` with ``threads`` threads."""

    name = "analytic"

    def __init__(self, device: DeviceSpec, backend: BackendSpec | str | None = None, *,
                 threads: int | None = None, burst: bool = False,
                 terms: CacheTerms = CacheTerms(),
                 tile_terms: TileTerms | None | str = "auto",
                 read_curve: tuple | None | str = "auto") -> None:
        """``tile_terms``: calibrated tile terms, None for none, or "auto" (this host's file
        for device ``host`` + back-end ``codesign``, see :func:`tile_calibration.terms_for`).
        ``read_curve``: ((working-set bytes, bytes/s), ...) one core's measured re-read
        bandwidth, None for none, or "auto" (this host's probe, :func:`host.cache_read_curve`)."""
        self.device = device
        self.backend = backend if isinstance(backend, BackendSpec) else backend_for(device, backend)
        if self.backend.name not in device.backends:
            raise ValueError(f"device {device.name} has no back-end {self.backend.name!r}; "
                             f"valid: {', '.join(device.backends)}")
        self.threads = device.default_threads if threads is None else threads
        self.cores = device.cpu.cores_for_threads(self.threads)
        self.burst, self.terms = burst, terms
        self.tile_terms = (terms_for(device, self.backend) if isinstance(tile_terms, str)
                           else tile_terms)
        if isinstance(read_curve, str):
            from codesign.cost_models.host import cache_read_curve
            read_curve = cache_read_curve(device)
        self.read_curve = tuple(read_curve) if read_curve else None
        self._prepare()

    # ------------------------------------------------------------------ precomputed tables
    def _prepare(self) -> None:
        # the read curve in log-log form, as predict interpolates it
        self._log_read_curve = (np.log(np.array(self.read_curve)).T if self.read_curve
                                else None)
        hz = np.array([(c.burst_hz if self.burst else c.sustained_hz).value for c in self.cores])
        self._cum_peak = np.stack([
            np.cumsum([c.flops_per_cycle[d].value for c in self.cores] * hz) for d in _DTYPES])
        self._cum_cache_bw = np.cumsum(hz * self.terms.cache_bytes_per_cycle)
        port_bw = np.array([c.load_ports.value * c.simd_bits.value / 8 for c in self.cores]) * hz
        self._cum_dram_bw = np.minimum(np.cumsum(port_bw * self.terms.dram_share_per_core),
                                       self.device.memory.dram_bytes_per_s.value)
        lead = self.cores[0]
        self._l1 = lead.l1d_bytes.value
        self._l2 = lead.l2_bytes.value
        self._llc = self._l2 + self.device.cpu.l3_bytes.value
        self._simd_bits = lead.simd_bits.value
        self._regs = lead.vector_registers.value
        self._fma_pipes = lead.fma_pipes
        self._fma_latency = lead.fma_latency_cycles.value
        self._load_ports = lead.load_ports.value
        n_kinds, n_patterns = len(OpKind), len(SparsityPattern)
        self._eff = np.full((n_kinds, len(_DTYPES)), np.nan)
        for kind, per_dtype in self.backend.efficiency.items():
            for dtype, value in per_dtype.items():
                self._eff[KIND_CODES[kind], DTYPE_CODES[dtype]] = value.value
        # depthwise layers beyond the back-end's dedicated micro-kernels (NaN: no separate term)
        self._dw_max_taps = self.backend.depthwise_max_taps or 0
        self._dw_large_eff = np.full(len(_DTYPES), np.nan)
        for dtype, value in (self.backend.depthwise_large_kernel_efficiency or {}).items():
            self._dw_large_eff[DTYPE_CODES[dtype]] = value.value
        # group-wise sub-byte weight linears: their own efficiency per measured group size
        # (an unlisted group takes the nearest listed one's; NaN: as the dense kernel)
        table = (self.backend.blockwise_weight_efficiency or {}).get(self.device.cpu.isa, {})
        self._blockwise_log2_groups = np.log2(np.array(sorted(table), dtype=np.float64))
        self._blockwise_eff = np.full((max(len(table), 1), len(_DTYPES)), np.nan)
        for i, group in enumerate(sorted(table)):
            for dtype, value in table[group].items():
                self._blockwise_eff[i, DTYPE_CODES[dtype]] = value.value
        self._gemv_eff = np.full(len(_DTYPES), np.nan)  # measured M = 1 linears (NaN: derived)
        for dtype, value in (self.backend.gemv_efficiency or {}).get(self.device.cpu.isa,
                                                                     {}).items():
            self._gemv_eff[DTYPE_CODES[dtype]] = value.value
        self._sparse_eff = np.zeros((n_kinds, n_patterns))
        for kind, cap in self.backend.ops.items():
            for pattern, eff in cap.sparsity.items():
                self._sparse_eff[KIND_CODES[kind], PATTERN_CODES[SparsityPattern(pattern)]] = eff
        t = self.backend.default_tile(self.device.cpu.isa)
        # AArch64 FMAs take A by vector lane (FMLA by element): mr values cost ceil(mr/lanes)
        # loads; x86 broadcasts each A value separately.
        self._by_element = self.device.cpu.isa == "aarch64"
        self._default_tile = np.array([t.mc, t.nc, t.kc, t.mr, t.nr], dtype=np.float64)
        self._checked: set[tuple] = set()
        self._prepare_fixed_costs()

    def _prepare_fixed_costs(self) -> None:
        """Per-op and per-inference fixed costs, portable kernels, measured efficiencies.

        Measured fixed costs are carried from the core they were measured on to each core by
        ``BackendSpec.fixed_cost_scale`` (clock and core class). A fork-join barrier waits for
        the team's slowest core, so it takes the largest scale of the cores used so far."""
        b = self.backend
        scale = np.array([b.fixed_cost_scale(c) for c in self.cores])
        self._dispatch_s = b.dispatch_overhead_s.value * scale[0]
        self._fork_join_s = b.thread_sync_overhead_s.value * np.maximum.accumulate(scale)
        self._program_s = b.program_overhead_s.value * scale[0] if b.program_overhead_s else 0.0
        table = sorted((runtime_op_code(op), b.portable_rates[cls])
                       for op, cls in (b.portable_ops or {}).items())
        self._portable_codes = np.array([c for c, _ in table], dtype=np.int64)
        self._portable_fixed = np.array([f.value for _, (f, _) in table]) * scale[0]
        self._portable_rate = np.array([r.value for _, (_, r) in table]) * scale[0]
        # measured 2-thread behaviour on this ISA: streaming ops within L2 and the program's
        # input/output handoff (``BackendSpec.measured_threading``)
        threading = (b.measured_threading or {}).get(self.device.cpu.isa)
        self._stream_scaling = threading.stream_scaling.value if threading else None
        self._handoff = (np.array(threading.handoff).T * [[1.0], [scale[0]]]
                         if threading and self.threads > 1 else None)
        self._meas_eff = np.full((len(OpKind), len(_DTYPES)), np.nan)
        for kind, per in (b.measured_efficiency or {}).get(self.device.cpu.isa, {}).items():
            for dtype, value in per.items():
                self._meas_eff[KIND_CODES[kind], DTYPE_CODES[dtype]] = value.value

    @property
    def program_overhead_s(self) -> float:
        """The inference's own fixed cost, charged to each candidate's first priced op."""
        return float(self._program_s)

    @property
    def assumptions(self) -> dict:
        clusters: dict[str, int] = {}
        for c in self.cores:
            clusters[c.name] = clusters.get(c.name, 0) + 1
        return {
            "device": self.device.name, "backend": self.backend.name, "threads": self.threads,
            "cores": [{"cluster": n, "core": next(c.core for c in self.cores if c.name == n),
                       "count": k} for n, k in clusters.items()],
            "clock": "burst" if self.burst else "sustained",
            "clock_hz": sorted({(c.burst_hz if self.burst else c.sustained_hz).value
                                for c in self.cores}, reverse=True),
            "peak_flops_per_s": {d: float(self._cum_peak[i, -1]) for i, d in enumerate(_DTYPES)},
            "dram_bytes_per_s": float(self._cum_dram_bw[-1]),
            "llc_bytes": self._llc,
            "cache_terms": asdict(self.terms),
            "read_curve": ([[n, bw] for n, bw in self.read_curve] if self.read_curve else None),
            "tile_terms": self.tile_terms.describe() if self.tile_terms else None,
            "fixed_costs_s": {"program": self._program_s, "dispatch": self._dispatch_s,
                              "fork_join": float(self._fork_join_s[-1]),
                              "portable_ops": len(self._portable_codes)},
        }

    # ------------------------------------------------------------------ capability check
    def _check(self, batch: OpBatch) -> None:
        # One integer per (kind, weight bits, act bits, group, dynamic): a 1-D unique is fast.
        packed = (((batch.kind * 64 + batch.weight_bits) * 64 + batch.act_bits) * 1024
                  + batch.group_size) * 2 + batch.dynamic_act
        uniq, first = np.unique(packed.astype(np.int64), return_index=True)
        for i in first:
            key = (int(batch.kind[i]), int(batch.weight_bits[i]), int(batch.act_bits[i]),
                   int(batch.group_size[i]), int(batch.dynamic_act[i]))
            if key in self._checked:
                continue
            kind = KINDS_BY_CODE[key[0]]
            quant = QuantSpec(int(key[1]), int(key[2]), int(key[3]), bool(key[4]))
            reason = self.backend.why_not(kind, quant, SparsitySpec())
            if reason is None and kind not in PRICED_FREE_KINDS and np.isnan(
                    self._eff[key[0], DTYPE_CODES[quant.compute_dtype]]):
                reason = (f"back-end {self.backend.name} has no efficiency term for "
                          f"{kind.value} at {quant.compute_dtype}")
            if reason is not None:
                name = batch.ops[i].name if batch.ops else f"op #{i}"
                raise UnpriceableOp(f"cannot price op {name!r}: {reason}")
            self._checked.add(key)

    # ------------------------------------------------------------------ pricing
    def micro_kernel_efficiency(self, mr: np.ndarray, nr: np.ndarray,
                                dtype: np.ndarray) -> np.ndarray:
        """Fraction of FMA peak an mr x nr register tile sustains on the lead core.

        Per k step the tile issues mr*ceil(nr/lanes) FMAs and loads ceil(nr/lanes) B vectors and
        the A values (mr broadcasts on x86, ceil(mr/lanes) vectors with AArch64's by-element FMA);
        it is limited by FMA issue, load ports, and FMA latency (each accumulator carries a
        dependency chain, hidden by unrolling K where registers allow). Tiles needing more
        registers than exist spill.
        """
        lanes = self._simd_bits / np.where(dtype == DTYPE_CODES["fp16"], 16, 32)
        b_vectors = np.ceil(nr / lanes)
        accumulators = mr * b_vectors
        # Kernels unroll K into extra accumulator sets until the FMA latency is hidden, as far
        # as the register file allows (a 1 x nr GEMV kernel keeps several partial sums).
        spare = np.maximum(self._regs - b_vectors - 1, accumulators)
        unroll = np.clip(np.ceil(self._fma_latency * self._fma_pipes / accumulators), 1,
                         np.maximum(np.floor(spare / accumulators), 1))
        fma_cycles = accumulators / self._fma_pipes
        a_loads = np.ceil(mr / lanes) if self._by_element else mr
        load_cycles = (b_vectors + a_loads) / self._load_ports
        latency_cycles = self._fma_latency / unroll
        eff = fma_cycles / np.maximum.reduce([fma_cycles, load_cycles, latency_cycles])
        needed = accumulators + b_vectors + 1
        return np.where(needed > self._regs, eff * self._regs / needed * 0.5, eff)

    def predict(self, batch: OpBatch) -> Prediction:
        self._check(batch)
        kind, dtype = batch.kind, batch.dtype
        free = _FREE[kind]
        tiled = _TILED[kind]
        tile = np.where(batch.tile[:, :1] > 0, batch.tile, self._default_tile)
        if not self.backend.tiles_choosable:
            tile = np.broadcast_to(self._default_tile, batch.tile.shape)
        mc, nc, kc, mr, nr = tile.T
        if not self.backend.tiles_choosable:
            # a library picking its own kernels has 1..mr-row variants (GEMV for one row)
            mr = np.minimum(mr, np.maximum(batch.m, 1))
        m, n, k, groups = batch.m, batch.n, batch.k, batch.groups

        # Parallelism: GEMM work splits into mr x nr tiles, other ops into fixed element chunks.
        gemm_units = np.ceil(m / mr) * np.ceil(n / nr) * groups
        elem_units = np.ceil(batch.out_elems / self.terms.work_unit_elems)
        units = np.where(tiled | (kind == KIND_CODES[OpKind.DEPTHWISE_CONV2D]),
                         np.maximum(gemm_units, elem_units), elem_units)
        # a fused attention kernel splits its work by head (``groups``: the query heads)
        units = np.where(kind == KIND_CODES[OpKind.ATTENTION], np.maximum(groups, units), units)
        used = np.clip(units, 1, self.threads).astype(np.int64) - 1
        peak = self._cum_peak[dtype, used]

        # Sparsity counts only where the back-end has a kernel for the pattern.
        sparse_eff = self._sparse_eff[kind, batch.pattern]
        accelerated = sparse_eff > 0
        useful_flops = np.where(accelerated, batch.flops * batch.density, batch.flops)
        eff = np.nan_to_num(self._eff[kind, dtype], nan=1.0) * np.where(accelerated, sparse_eff, 1.0)
        if self._dw_max_taps:
            # depthwise k = kh x kw taps; past the dedicated micro-kernels, the generic path
            large = ((kind == KIND_CODES[OpKind.DEPTHWISE_CONV2D]) & (k > self._dw_max_taps)
                     & np.isfinite(self._dw_large_eff[dtype]))
            eff = np.where(large, self._dw_large_eff[dtype], eff)
        if len(self._blockwise_log2_groups):
            log_g = np.log2(np.maximum(batch.group_size, 1))
            nearest = np.argmin(np.abs(log_g[:, None] - self._blockwise_log2_groups), axis=1)
            bw_eff = self._blockwise_eff[nearest, dtype]
            blockwise = ((kind == KIND_CODES[OpKind.LINEAR]) & (batch.weight_bits < 8)
                         & (batch.group_size > 0) & np.isfinite(bw_eff))
            eff = np.where(blockwise, bw_eff, eff)

        micro = np.where(tiled, self.micro_kernel_efficiency(mr, nr, dtype), 1.0)
        # a single-op microbenchmark's efficiency on this ISA replaces the estimated kernel,
        # derived micro-kernel and cache-spill terms (a large depthwise kernel keeps its
        # measured slowdown; a one-row linear its measured GEMV term)
        meas = self._meas_eff[kind, dtype]
        measured = np.isfinite(meas) & ~accelerated
        with np.errstate(invalid="ignore", divide="ignore"):
            base = np.nan_to_num(self._eff[kind, dtype], nan=1.0)
            eff = np.where(measured, eff * meas / base, eff)
        micro = np.where(measured, 1.0, micro)
        # a measured one-row (GEMV) efficiency replaces the derived kernel and micro-kernel terms
        gemv = ((kind == KIND_CODES[OpKind.LINEAR]) & (m == 1) & ~accelerated
                & np.isfinite(self._gemv_eff[dtype]) & ~((batch.weight_bits < 8)
                                                         & (batch.group_size > 0)))
        eff = np.where(gemv, self._gemv_eff[dtype], eff)
        micro = np.where(gemv, 1.0, micro)
        measured &= ~gemv
        with np.errstate(invalid="ignore", divide="ignore"):
            util = np.where(tiled, (m * n) / (np.ceil(m / mr) * mr * np.ceil(n / nr) * nr), 1.0)
        w_bytes = np.where(accelerated, batch.weight_bytes, batch.dense_weight_bytes)
        act_elem_bytes = batch.act_bits / 8
        w_elem_bytes = np.maximum(batch.weight_bits, 8) / 8
        # Cache fit of the blocked GEMM's working sets (BLIS: B sliver in L1, A block in L2).
        l1_set = np.minimum(kc, k) * (np.minimum(nr, n) * w_elem_bytes + mr * act_elem_bytes)
        l2_set = np.minimum(mc, m) * np.minimum(kc, k) * act_elem_bytes
        spill = np.where(tiled & (l1_set > self._l1), self.terms.l1_spill_efficiency, 1.0)
        spill *= np.where(tiled & (l2_set > self._l2), self.terms.l2_spill_efficiency, 1.0)
        # the measured GEMV and microbenchmark terms include their cache fit
        spill = np.where(gemv | measured, 1.0, spill)
        compute_s = useful_flops / (peak * eff * micro * np.maximum(util, 1e-9) * spill)
        if self.tile_terms is not None:
            # Measured on this host: the calibrated tile term (one core) replaces the derived
            # one for dense GEMMs; sparse kernels block by format, not by tile, and keep it.
            rows = np.flatnonzero(tiled & ~accelerated)
            if len(rows):
                one_core = self._cum_peak[dtype[rows], 0]
                fp16_scale = (self._cum_peak[DTYPE_CODES["fp16"], 0]
                              / self._cum_peak[DTYPE_CODES["fp32"], 0])
                t1 = self.tile_terms.compute_seconds(
                    dtype[rows], batch.weight_bits[rows], m[rows], n[rows], k[rows],
                    groups[rows], tile[rows], one_core * micro[rows], fp16_scale)
                known = np.isfinite(t1)
                compute_s[rows[known]] = (t1 * one_core / peak[rows])[known]

        # Traffic: compulsory, plus the blocked GEMM's re-reads once the operands exceed the LLC.
        a_bytes, c_bytes = batch.act_in_bytes, batch.act_out_bytes
        compulsory = a_bytes + w_bytes + c_bytes
        big = compulsory > self._llc
        a_rereads = np.where(tiled & big, np.ceil(n * groups / nc), 1.0)
        c_passes = np.where(tiled & big, 2 * np.ceil(k / kc) - 1, 1.0)
        traffic = a_bytes * a_rereads + w_bytes + c_bytes * c_passes
        # Weights stay cache-resident across inferences when the whole model fits in the LLC.
        model_w = np.bincount(batch.candidate, weights=w_bytes, minlength=batch.n_candidates)
        resident = model_w[batch.candidate] <= self._llc
        dram_s = np.where(big, traffic, np.where(resident, 0.0, w_bytes)) / self._cum_dram_bw[used]
        if self.read_curve is not None:
            # resident weights re-read at the measured bandwidth for the model's working set
            # (per core: the curve is one core's, scaled by the cores the op uses)
            log_ws, log_bw = self._log_read_curve
            w_bw = np.exp(np.interp(np.log(np.maximum(model_w, 1.0)), log_ws, log_bw))
            w_bw = w_bw[batch.candidate] * (used + 1)
            w_bw = np.where(resident & ~big, w_bw, self._cum_cache_bw[used])
            cache_s = (traffic - w_bytes) / self._cum_cache_bw[used] + w_bytes / w_bw
        else:
            cache_s = traffic / self._cum_cache_bw[used]
        if self._stream_scaling is not None:
            # measured: a streaming op whose data fits one core's L2 gains only this factor
            # from 2 threads (ideal 2; more threads keep the same fraction of ideal)
            shared = (used > 0) & (traffic <= self._l2)
            cache_s = np.where(shared, cache_s * 2.0 / self._stream_scaling, cache_s)
        memory_s = np.maximum(dram_s, cache_s)

        # Ops the back-end leaves to the runtime's portable kernels: their measured fixed cost
        # and per-element rate, on the calling thread alone (ExecuTorch's portable kernels do
        # not use its thread pool).
        portable = (np.isin(batch.runtime_op, self._portable_codes) if len(self._portable_codes)
                    else np.zeros(len(kind), dtype=bool))
        if portable.any():
            at = np.searchsorted(self._portable_codes, batch.runtime_op[portable])
            compute_s[portable] = batch.out_elems[portable] * self._portable_rate[at]
            memory_s[portable] = 0.0
            used = np.where(portable, 0, used)
        overhead_s = np.full(len(kind), self._dispatch_s)
        overhead_s += np.where(used > 0, self._fork_join_s[used], 0.0)
        if portable.any():
            overhead_s[portable] = self._portable_fixed[at]
        if self._program_s or self._handoff is not None:
            # the inference's own fixed costs, charged to each candidate's first priced op so
            # that a candidate's latency stays the sum of its ops'
            live = np.flatnonzero(~free)
            cand = batch.candidate[live]
            _, first = np.unique(cand, return_index=True)
            overhead_s[live[first]] += self._program_s
            if self._handoff is not None:
                # at > 1 thread the program's input and output pass between the calling
                # thread and the pool: measured by their bytes
                last = len(cand) - 1 - np.unique(cand[::-1], return_index=True)[1]
                io = batch.act_in_bytes[live[first]] + batch.act_out_bytes[live[last]]
                overhead_s[live[first]] += np.interp(io, *self._handoff)

        compute_s = np.where(free, 0.0, compute_s)
        memory_s = np.where(free, 0.0, memory_s)
        overhead_s = np.where(free, 0.0, overhead_s)
        op_latency = np.maximum(compute_s, memory_s) + overhead_s
        bound = np.argmax(np.stack([compute_s, memory_s, overhead_s]), axis=0)
        bound = np.where(free, 2, bound)
        totals = np.bincount(batch.candidate, weights=op_latency, minlength=batch.n_candidates)
        return Prediction(latency_s=totals, op_latency_s=op_latency, op_bound=bound,
                          candidate=batch.candidate, assumptions=self.assumptions,
                          op_compute_s=compute_s, op_memory_s=memory_s)

    # ------------------------------------------------------------------ persistence
    def save(self, path: Path) -> None:
        payload = {"format": "codesign.analytic", "version": FORMAT_VERSION,
                   "device": self.device.path or self.device.name,
                   "device_sha256": self.device.sha256, "backend": self.backend.name,
                   "threads": self.threads, "burst": self.burst, "terms": asdict(self.terms),
                   "tile_terms": self.tile_terms.to_dict() if self.tile_terms else None}
        Path(path).write_text(json.dumps(payload, indent=2))

    @classmethod
    def load(cls, path: Path) -> "AnalyticCostModel":
        payload = json.loads(Path(path).read_text())
        if payload.get("format") != "codesign.analytic" or payload.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path}: not a codesign analytic model of version {FORMAT_VERSION}")
        device = load_device(payload["device"])
        stored = payload.get("tile_terms", "auto")  # files older than tile terms: "auto"
        return cls(device, payload["backend"], threads=payload["threads"],
                   burst=payload["burst"], terms=CacheTerms(**payload["terms"]),
                   tile_terms=TileTerms.from_dict(stored) if isinstance(stored, dict) else stored)
