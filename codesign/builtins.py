"""The built-in implementations behind ``codesign.registry``'s names.

Small adapters, each importing its implementation when called: the registry lists names without
importing torch model code. A plug-in writes the same objects in its own module and names them
in an entry point (``codesign.registry`` says how).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from codesign.registry import SpaceEntry


# ------------------------------------------------------------------------------ spaces
def _threads(device, backend, threads):
    from codesign.context import threads_choices

    return threads or threads_choices(device, backend)


def _mbconv(backend, device, threads, max_formats):
    from codesign.search_spaces.mbconv import MBConvSpace

    return MBConvSpace(backend, threads_choices=_threads(device, backend, threads),
                       max_formats=max_formats)


def _mbconv_timed(space, threads: int):
    from codesign.search_spaces.mbconv import MBConvSpace

    # the same space file, its thread choice fixed: what is timed is what the params say
    return MBConvSpace(space.backend, threads_choices=(threads,), config=space.config)


def _nasbench201(backend, device, threads, max_formats):
    from codesign.search_spaces.nasbench201 import NASBench201Space

    return NASBench201Space(backend)


def _fbnet(backend, device, threads, max_formats):
    from codesign.search_spaces.fbnet import FBNetSpace

    return FBNetSpace(backend)


def _transformer(backend, device, threads, max_formats):
    from codesign.search_spaces.transformer import TransformerSpace

    return TransformerSpace(backend, threads_choices=_threads(device, backend, threads))


def _reader(name: str) -> Callable[[], Any]:
    def reader():
        from codesign import calibrate

        return getattr(calibrate, f"{name}_reader")()
    return reader


MBCONV = SpaceEntry("mbconv", _mbconv, "codesign.search_spaces.mbconv:MBConvSpace",
                    evaluator="supernet", exporter="supernet", reader=_reader("mbconv"),
                    timed=_mbconv_timed)
NASBENCH201 = SpaceEntry("nasbench201", _nasbench201,
                         "codesign.search_spaces.nasbench201:NASBench201Space",
                         reader=_reader("nasbench201"))
FBNET = SpaceEntry("fbnet", _fbnet, "codesign.search_spaces.fbnet:FBNetSpace",
                   reader=_reader("fbnet"))
TRANSFORMER = SpaceEntry("transformer", _transformer,
                         "codesign.search_spaces.transformer:TransformerSpace",
                         evaluator="perplexity", exporter="transformer")


# ------------------------------------------------------------------------------ evaluators
def supernet_evaluator(space, *, seed: int, progress):
    from codesign.evaluation.supernet_evaluator import SupernetEvaluator

    # the space file's seed: --seed seeds the sampler only
    return SupernetEvaluator(space, progress=progress("MBConv supernet training"))


def perplexity_evaluator(space, *, seed: int, progress):
    from codesign.evaluation.perplexity import PerplexityEvaluator

    return PerplexityEvaluator(space, seed=seed, progress=progress("LM supernet training"))


# ------------------------------------------------------------------------------ exporters
class _SupernetExporter:
    """CNN members built from the trained supernet (``codesign.export.run``)."""

    def open(self, run_dir: Path, evaluator: Any = None) -> Any:
        from codesign.export.run import _Run

        return _Run.open(run_dir, evaluator)

    def export_member(self, run, member, out: Path, formats: Sequence[str], log) -> Any:
        from codesign.export.run import export_member

        return export_member(run, member, out, formats, log)


class _TransformerExporter:
    """Decoders: prefill and decode programs (``codesign.export.transformer_run``)."""

    def open(self, run_dir: Path, evaluator: Any = None) -> Any:
        from codesign.export.transformer_run import TransformerRun

        return TransformerRun.open(run_dir)

    def export_member(self, run, member, out: Path, formats: Sequence[str], log) -> Any:
        from codesign.export.transformer_run import export_transformer_member

        return export_transformer_member(run, member, out, formats, log)


SUPERNET_EXPORTER = _SupernetExporter()
TRANSFORMER_EXPORTER = _TransformerExporter()


# ------------------------------------------------------------------------------ cost models
def analytic_cost_model(device, backend, *, threads: int, path: Path | None = None):
    from codesign.cost_models.analytic import AnalyticCostModel

    return AnalyticCostModel(device, backend, threads=threads)


def _fitted(kind: str):
    def factory(device, backend, *, threads: int, path: Path | None = None):
        from codesign.learned_pricing import load_pricer

        pricer = load_pricer(kind, device, backend, path)
        if pricer.threads != threads:
            raise ValueError(f"the {kind} cost model {pricer.path} was measured at "
                             f"{pricer.threads} thread(s), not {threads}")
        return pricer.model
    factory.__doc__ = f"The saved {kind} model (``codesign calibrate --cost-model {kind}``)."
    return factory


learned_cost_model = _fitted("learned")
hybrid_cost_model = _fitted("hybrid")
