"""One member of a search's Pareto front, as pareto.json records it (contract: ../shared/CLI.md).

``codesign.results`` writes members; report, export, measure and sweep read them. They all go
through ``ParetoMember``: ``to_json`` writes exactly the keys pareto.json has always had (an
optional key only where the member has it, in the order the search writes them) and
``from_json`` reads them back. The quality keys are named after the run's metric
(``accuracy``, ``accuracy_interval``, ``test_accuracy``... or ``perplexity``...); a key this code
does not know (a newer or an older writer's) is kept in ``extra`` and written back, so a file
read and written again loses nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from codesign.evaluation.base import metric_keys

Band = tuple[float, float]

# attribute -> pareto.json key (a "{...}" one: the run's metric's name for it,
# ``codesign.evaluation.base.metric_keys``), in the order they are written
_KEYS: dict[str, str] = {
    "trial": "trial", "params": "params", "latency_s": "latency_s",
    "latency_band_s": "latency_band_s", "quality": "{value}",
    "quality_interval": "{interval}", "model_bytes": "model_bytes",
    "peak_activation_bytes": "peak_activation_bytes", "threads": "threads",
    "baseline": "baseline", "formats": "formats", "layers": "layers", "ttft_s": "ttft_s",
    "ttft_band_s": "ttft_band_s", "prefill_layers": "prefill_layers",
    "memory_bytes": "memory_bytes", "memory_share_bytes": "memory_share_bytes",
    # named so whatever the metric (CLI.md: "accuracy_before_finetune" beside "accuracy")
    "quality_before_finetune": "accuracy_before_finetune",
    "quality_before_finetune_interval": "accuracy_before_finetune_interval",
    "test_quality": "{test}", "test_quality_interval": "{test_interval}",
}
_PAIRS = frozenset({"latency_band_s", "quality_interval", "ttft_band_s",
                    "quality_before_finetune_interval", "test_quality_interval"})


@dataclass
class ParetoMember:
    """A front member (or the baseline). ``quality`` is the value of the run's ``metric``
    (val split), ``test_quality`` the held-out one; ``layers`` / ``prefill_layers`` the
    per-layer rows (name, kind, latency_s, bound, flops, bytes, bits, sparsity, tile). A field
    the member does not have is None (a prefill phase, a RAM check, a fine-tune, formats, or a
    key an older or partial file lacks)."""

    trial: int
    params: dict[str, Any]
    metric: str = "accuracy"
    latency_s: float | None = None
    latency_band_s: Band | None = None
    quality: float | None = None
    quality_interval: Band | None = None
    model_bytes: int | None = None
    peak_activation_bytes: int | None = None
    threads: int | None = None
    baseline: bool | None = None
    formats: list[str] | None = None
    layers: list[dict[str, Any]] | None = None
    ttft_s: float | None = None
    ttft_band_s: Band | None = None
    prefill_layers: list[dict[str, Any]] | None = None
    memory_bytes: int | None = None
    memory_share_bytes: int | None = None
    quality_before_finetune: float | None = None
    quality_before_finetune_interval: Band | None = None
    test_quality: float | None = None
    test_quality_interval: Band | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys this code does not know

    def to_json(self) -> dict[str, Any]:
        """The pareto.json member: its known keys in the search's order, then ``extra``."""
        out: dict[str, Any] = {}
        names = metric_keys(self.metric)
        for attr, key in _KEYS.items():
            value = getattr(self, attr)
            if value is not None:
                out[key.format(**names)] = list(value) if attr in _PAIRS else value
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], metric: str | None = None) -> "ParetoMember":
        """The member ``data`` records; ``metric``: the run's (pareto.json ``metric``), else
        the one ``data``'s keys are named after (``accuracy`` if none is).

        Raises:
            KeyError: no ``trial`` or ``params``. TypeError: ``data`` is not a mapping.
        """
        if not isinstance(data, dict):
            raise TypeError(f"a pareto.json member is a JSON object, not {type(data).__name__}")
        metric = metric or _metric_named_in(data)
        values: dict[str, Any] = {"trial": data["trial"], "params": data["params"]}
        known = set()
        names = metric_keys(metric)
        for attr, key in _KEYS.items():
            key = key.format(**names)
            if key in data and data[key] is not None:
                value = data[key]
                values[attr] = tuple(value) if attr in _PAIRS else value
                known.add(key)
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(metric=metric, extra=extra, **values)


def _metric_named_in(data: dict[str, Any]) -> str:
    """The metric whose ``<metric>_interval`` key ``data`` has (not a test or before-fine-tune
    one); ``accuracy`` if none."""
    for key in data:
        if key.endswith("_interval") and not key.startswith("test_") \
                and key != "accuracy_before_finetune_interval":
            name = key[:-len("_interval")]
            if name in data:
                return name
    return "accuracy"


def front_members(pareto: dict[str, Any]) -> list[ParetoMember]:
    """The members of a pareto.json (its ``members``), read with the run's metric."""
    metric = pareto.get("metric", "accuracy")
    return [ParetoMember.from_json(m, metric) for m in pareto.get("members", [])]


def baseline_member(pareto: dict[str, Any]) -> ParetoMember | None:
    """The baseline a pareto.json records (``--baseline``), or None."""
    base = pareto.get("baseline")
    return ParetoMember.from_json(base, pareto.get("metric", "accuracy")) if base else None

