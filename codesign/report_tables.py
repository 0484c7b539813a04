"""Plain-text tables for the terminal (predict, devices)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from codesign.cost_models.devices import CONFIG_DIR, DeviceSpec, Sourced, source_counts


def _table(headers: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _si(value: float, unit: str) -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def format_prediction(priced, *, model_name: str, input_shape, dtype: str) -> str:
    pred, batch = priced.prediction, priced.batch
    total = priced.latency_s
    rows = []
    for layer in pred.layers(batch, 0):
        if layer["kind"] == "free":
            continue
        rows.append([layer["name"], layer["kind"], f"w{layer['weight_bits']}a{layer['act_bits']}",
                     "+".join(layer["fused"]) or "-", _si(layer["flops"], "FLOP"),
                     _si(layer["bytes"], "B"), f"{layer['latency_s'] * 1e3:.4f}",
                     f"{layer['latency_s'] / total:.1%}", layer["bound"]])
    a = pred.assumptions
    cores = ", ".join(f"{c['count']}x {c['core']}" for c in a["cores"])
    shares = ", ".join(f"{k} {v:.0%}" for k, v in priced.bound_shares().items())
    head = (f"{model_name} {list(input_shape)} {dtype} on {priced.device.display_name} "
            f"[{priced.device.name}], back-end {priced.backend}, {a['threads']} thread(s): {cores} "
            f"@ {a['clock']} clock")
    body = _table(["layer", "kind", "bits", "fused", "flops", "bytes", "ms", "share", "bound"],
                  rows, right={4, 5, 6, 7})
    n_free = sum(1 for op in priced.ops if op.kind.value == "free")
    foot = (f"predicted latency: {total * 1e3:.3f} ms  ({len(rows)} kernels, {n_free} free ops "
            f"priced at zero)\ntime by bound: {shares}")
    from codesign.cost_models.host import unmeasured_clock_note

    note = unmeasured_clock_note(priced.device)
    if note:
        foot += f"\n{note}"
    if a.get("cost_model_file"):
        foot += (f"\npriced by the {a['cost_model']} model {a['cost_model_file']} (cross-validated "
                 f"error ~{a['cv_rms_log_error']:.0%}; per-layer terms: the analytic ones rescaled)")
    return f"{head}\n{body}\n{foot}"


def _src(s: Sourced, unit: str = "", scale: float = 1.0, device_file: str | None = None) -> str:
    """``value unit [source — ref]``; a cluster's number (``device_file`` given) that its device
    file took from a core file says which."""
    ref = f" — {s.ref}" if s.ref else ""
    came = (f" (from core file {_short(s.origin)})"
            if device_file is not None and s.origin and s.origin != device_file else "")
    return f"{s.value / scale:g}{unit} [{s.source}{ref}]{came}"


def _short(path: str) -> str:
    """A shipped config file as configs/..., a user's file as written."""
    try:
        return "configs/" + str(Path(path).relative_to(CONFIG_DIR))
    except ValueError:
        return path


def estimated_summary(spec: DeviceSpec) -> dict[str, Any]:
    """How many of a device's numbers are estimates, and how many came from core files: what
    ``codesign devices show`` and its ``--json`` report."""
    counts = source_counts(spec)
    from_cores = sum(1 for c in spec.cpu.clusters for _, v in _cluster_numbers(c)
                     if v.origin and v.origin != spec.path)
    return {"estimated": counts["estimated"], "numbers": sum(counts.values()),
            "by_source": counts, "from_core_files": from_cores}


def _cluster_numbers(c) -> list[tuple[str, Sourced]]:
    return [(f"{d} ops/cycle/core", v) for d, v in c.flops_per_cycle.items()] + [
        (k, getattr(c, k)) for k in ("sustained_hz", "burst_hz", "l1d_bytes", "l2_bytes",
                                     "simd_bits", "vector_registers", "fma_latency_cycles",
                                     "load_ports")]


def _uarch_line(core) -> str:
    order = "out-of-order" if core.out_of_order else "in-order"
    return (f"    core file {_short(core.path)}: {core.vendor} {core.arch}, {order}, decode "
            f"{core.decode_width.value:g}/dispatch {core.dispatch_width.value:g} per cycle, "
            f"{core.fp_pipes.value:g} FP/ASIMD pipe(s), i8mm {'yes' if core.i8mm else 'no'}")


def format_device(spec: DeviceSpec) -> str:
    here = spec.path
    lines = [f"{spec.name}: {spec.display_name} ({spec.soc})",
             f"  file: {spec.path}  sha256: {spec.sha256[:16]}",
             f"  back-ends: {', '.join(spec.backends)}  default threads: {spec.default_threads}",
             f"  threads fill clusters in order: {' -> '.join(spec.cpu.thread_order)}",
             f"  L3: {_src(spec.cpu.l3_bytes, ' KiB', 1024)}"]
    for c in spec.cpu.clusters:
        lines.append(f"  cluster {c.name}: {c.count}x {c.core}")
        if c.uarch is not None:
            lines.append(_uarch_line(c.uarch))
        lines.append(f"    sustained clock: {_src(c.sustained_hz, ' GHz', 1e9, here)}")
        lines.append(f"    burst clock:     {_src(c.burst_hz, ' GHz', 1e9, here)}")
        for dtype, v in c.flops_per_cycle.items():
            lines.append(f"    {dtype} ops/cycle/core: {_src(v, device_file=here)}")
        lines.append(f"    int8 dot product: {'yes' if c.int8_dot_product else 'no'}")
        for label, value, unit, scale in (("L1D", c.l1d_bytes, " KiB", 1024),
                                          ("L2" + (" (shared)" if c.l2_shared else ""),
                                           c.l2_bytes, " KiB", 1024),
                                          ("SIMD width", c.simd_bits, " bit", 1),
                                          ("vector registers", c.vector_registers, "", 1),
                                          ("FMA latency", c.fma_latency_cycles, " cycles", 1),
                                          ("load ports", c.load_ports, "", 1)):
            lines.append(f"    {label}: {_src(value, unit, scale, here)}")
    m = spec.memory
    lines += [f"  DRAM bandwidth: {_src(m.dram_bytes_per_s, ' GB/s', 1e9)}",
              f"  RAM: {_src(m.ram_bytes, ' GB', 1e9)}",
              f"  app RAM share: {_src(m.app_ram_fraction)}"]
    for label, acc in (("GPU", spec.gpu), ("NPU", spec.npu)):
        if acc is not None:
            peaks = "; ".join(f"{k}: {_src(v, ' TOPS', 1e12)}" for k, v in acc.peak_ops_per_s.items())
            lines.append(f"  {label}: {acc.name} {acc.description} {peaks or '(no peak published)'}")
    if spec.notes:
        lines.append(f"  notes: {spec.notes}")
    est = estimated_summary(spec)
    others = ", ".join(f"{k} {v}" for k, v in est["by_source"].items() if k != "estimated" and v)
    lines.append(f"  estimated: {est['estimated']} of {est['numbers']} numbers ({others}); "
                 f"{est['from_core_files']} from core files")
    return "\n".join(lines)


def _peak_default(spec: DeviceSpec, dtype: str = "fp32") -> float:
    return sum(c.peak_flops_per_s(dtype) for c in spec.cpu.cores_for_threads(spec.default_threads))


def format_device_list(specs: list[DeviceSpec]) -> str:
    rows = []
    for s in specs:
        cores = " + ".join(f"{c.count}x {c.core}" for c in s.cpu.clusters)
        est = estimated_summary(s)
        rows.append([s.name, s.display_name, cores, str(s.default_threads),
                     f"{_peak_default(s) / 1e9:.0f}", f"{s.memory.dram_bytes_per_s.value / 1e9:.1f}",
                     f"{est['estimated']}/{est['numbers']}", ",".join(s.backends)])
    return _table(["device", "name", "CPU", "threads", "fp32 GFLOP/s", "DRAM GB/s", "estimated",
                   "back-ends"], rows, right={3, 4, 5, 6})


def _sourced_json(value: Any) -> Any:
    if isinstance(value, Sourced):
        out = {"value": value.value, "source": value.source, "ref": value.ref}
        return {**out, "origin": value.origin} if value.origin else out
    if isinstance(value, dict):
        return {k: _sourced_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_sourced_json(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {k: _sourced_json(getattr(value, k)) for k in value.__dataclass_fields__}
    return value


def device_json(spec: DeviceSpec, *, brief: bool = False) -> dict[str, Any]:
    if brief:
        return {"name": spec.name, "display_name": spec.display_name, "soc": spec.soc,
                "backends": list(spec.backends), "default_threads": spec.default_threads,
                "fp32_peak_flops_per_s": _peak_default(spec),
                "dram_bytes_per_s": spec.memory.dram_bytes_per_s.value,
                "estimated": estimated_summary(spec)}
    return {**_sourced_json(spec), "estimated": estimated_summary(spec)}


METRIC_LABELS = {"accuracy": "acc", "perplexity": "ppl"}


def metric_label(pareto: dict[str, Any]) -> tuple[str, str, str]:
    """(short label, full name, direction note) of a run's quality metric."""
    metric = pareto.get("metric", "accuracy")
    note = "" if pareto.get("higher_is_better", True) else " (lower is better)"
    return METRIC_LABELS.get(metric, metric), metric, note


def _shape(shape) -> str:
    return "x".join(str(int(d)) for d in shape)


def input_shapes(pareto: dict[str, Any]) -> tuple[str, str] | None:
    """(deploy, eval) input shapes as ``1x3x256x256`` text when a run priced latency at another
    input than it measured its metric at; None when they are the same (or not recorded)."""
    deploy, evaluated = pareto.get("deploy_input_shape"), pareto.get("eval_input_shape")
    if not deploy or not evaluated or list(deploy) == list(evaluated):
        return None
    return _shape(deploy), _shape(evaluated)


def shapes_note(pareto: dict[str, Any]) -> str | None:
    """``latency priced at 1x3x256x256; accuracy measured at 1x3x64x64`` where they differ."""
    shapes = input_shapes(pareto)
    if shapes is None:
        return None
    return (f"latency priced at {shapes[0]}; {pareto.get('metric', 'accuracy')} measured at "
            f"{shapes[1]}")


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.3g}%"


def band_note(pareto: dict[str, Any]) -> str | None:
    """What the latency band of every member is and where it comes from (pareto.json's
    ``latency_band``): which measured error, its source and reference, on which devices."""
    band = pareto.get("latency_band")
    if not band:
        return None
    lo, hi = band.get("lower_fraction", band["fraction"]), band.get("upper_fraction",
                                                                    band["fraction"])
    size = f"±{_percent(hi)}" if abs(lo - hi) < 5e-4 else f"-{_percent(lo)}/+{_percent(hi)}"
    if band.get("source") == "none":
        return f"latency band: none ({band.get('file', '')}: {band.get('ref', '')})"
    devices = list(band.get("devices") or [])
    device = pareto.get("device")
    where = (f"measured on {', '.join(devices)}" if devices else "devices not stated")
    if devices and device and device not in devices:
        where += f", not on {device}"
    note = f"\n{band['host_clock_note']}" if band.get("host_clock_note") else ""
    return (f"latency band: {size} of the predicted latency, {where}\n"
            f"  = {band.get('file', '?')} {band.get('field', '')} ({band.get('source', '?')}): "
            f"{band.get('ref', '')}{note}")


def floor_note(pareto: dict[str, Any]) -> str:
    """The accuracy floor the members clear, and the reference model it came from."""
    floor, ref = pareto.get("min_accuracy"), pareto.get("reference")
    if floor is None:
        return ""
    line = f"accuracy floor: val >= {floor:.3f}"
    if ref:
        line += (f" ({ref['model']} on the same split: val {ref['accuracy']:.3f}, "
                 f"test {ref['test_accuracy']:.3f})")
    return line


def references_note(pareto: dict[str, Any]) -> str | None:
    """What classical models reach on the same split (perplexity spaces: n-gram models), so a
    front's numbers can be judged: one line, the models in pareto.json's order."""
    refs = pareto.get("references")
    if not refs:
        return None
    parts = [f"{r.get('label', r['model'])} {r['val']:.2f}/{r['test']:.2f}" for r in refs]
    return "references on the same bytes (val/test): " + "; ".join(parts)


def task_note(pareto: dict[str, Any]) -> str | None:
    """Which data a ``--task`` run trained and scored on (None: the built-in task)."""
    task = pareto.get("task")
    if not task:
        return None
    n = task.get("n", {})
    return (f"task: {task['name']} ({task['ref']}): {task['num_classes']} classes, "
            f"{'x'.join(map(str, task['image_shape']))} images, "
            f"{'/'.join(str(n.get(k, '?')) for k in ('train', 'val', 'test'))} "
            f"train/val/test, data sha256 {task['sha256'][:12]}")


def format_pareto(pareto: dict[str, Any], *, run_dir=None, elapsed_s: float | None = None) -> str:
    """The end-of-run table: one row per front member, the baseline marked. A space with a
    prefill phase and a RAM check (transformer) adds time to first token and resident bytes;
    the quality column is named after the evaluator's metric (``val ppl`` for perplexity)."""
    from codesign.pareto_member import baseline_member, front_members

    short, metric, note = metric_label(pareto)
    rows = []
    members = front_members(pareto)
    phases = any(m.ttft_s is not None for m in members)
    memory = any(m.memory_bytes is not None for m in members)
    tuned = any(m.quality_before_finetune is not None for m in members)
    for m in members:
        lo, hi = m.quality_interval
        tlo, thi = m.latency_band_s
        bits = sorted({f"w{layer['weight_bits']}a{layer['act_bits']}" for layer in m.layers
                       if layer["kind"] in ("conv2d", "linear", "depthwise_conv2d")})
        sparse = sorted({layer["sparsity"] for layer in m.layers} - {"dense"})
        extra = []
        if tuned:
            extra.append(f"{m.quality_before_finetune:.3f}"
                         if m.quality_before_finetune is not None else "-")
        if phases:
            extra.append(f"{m.ttft_s * 1e3:.2f}" if m.ttft_s is not None else "-")
        if memory:
            extra.append(f"{m.memory_bytes / 1e6:.2f}/{m.memory_share_bytes / 1e9:.1f}G"
                         if m.memory_bytes is not None else "-")
        test = m.test_quality if m.test_quality is not None else float("nan")
        rows.append([str(m.trial) + (" (baseline)" if m.baseline else ""),
                     f"{m.quality:.3f} [{lo:.3f},{hi:.3f}]", f"{test:.3f}",
                     f"{m.latency_s * 1e3:.2f} [{tlo * 1e3:.2f},{thi * 1e3:.2f}]", *extra,
                     f"{m.model_bytes / 1e6:.2f}", f"{m.peak_activation_bytes / 1e6:.2f}",
                     str(m.threads), ",".join(m.formats or bits),
                     ",".join(sparse) or "dense"])
    head = (f"Pareto front: {pareto['device']} / {pareto['backend']}, budget "
            f"{pareto['budget_s'] * 1e3:g} ms"
            + (" per decoded token" if phases else "")
            + (f", TTFT budget {pareto['ttft_budget_s'] * 1e3:g} ms"
               if pareto.get("ttft_budget_s") is not None else "")
            + f", space {pareto['space']}, cost model {pareto['cost_model']}"
            + (f"; {metric}{note}" if metric != "accuracy" else ""))
    latency = "decode ms/token [band]" if phases else "latency ms [band]"
    extra_heads = ((["before fine-tune"] if tuned else []) + (["TTFT ms"] if phases else [])
                   + (["RAM MB/share"] if memory else []))
    n = 4 + len(extra_heads)
    table = _table(["trial", f"val {short} [95% CI]", f"test {short}", latency, *extra_heads,
                    "MB", "peak act MB", "threads", "formats", "sparsity"], rows,
                   right={*range(4, 4 + len(extra_heads)), n, n + 1, n + 2})
    interrupted = pareto.get("n_interrupted", 0)
    counts = (f"{pareto['trials']} trials: {pareto['n_complete']} complete "
              f"({pareto['n_feasible']} within budget), {pareto['n_failed']} failed"
              + (f" ({interrupted} interrupted by a crash)" if interrupted else "")
              + f"; {len(members)} on the front")
    base = baseline_member(pareto)
    shapes, band = shapes_note(pareto), band_note(pareto)
    lines = [head, *([shapes] if shapes else []), table, *([band] if band else []), counts]
    floor = floor_note(pareto)
    if floor:
        lines.insert(1, floor)
    task = task_note(pareto)
    if task:
        lines.insert(1, task)
    refs = references_note(pareto)
    if refs:
        lines.append(refs)
    if base is not None:
        lines.append(f"baseline (trial {base.trial}): val {short} {base.quality:.3f}, "
                     f"{base.latency_s * 1e3:.2f} ms, {base.model_bytes / 1e6:.2f} MB"
                     + ("" if base.latency_s <= pareto["budget_s"] else " — over budget"))
    if run_dir is not None:
        lines.append(f"run directory: {run_dir}" + (f"  ({elapsed_s:.0f} s)" if elapsed_s else ""))
    return "\n".join(lines)
