"""Registries, one per extension point: search spaces, evaluators, exporters, cost models.

Each registry maps a name to an implementation of one small protocol (below, each docstring
states its contract). A name comes from one of three sources, looked up in this order:

1. ``register(name, obj)`` in this process (a test, a notebook);
2. the built-ins (``codesign.builtins``), held as ``"module:attr"`` references and imported on
   first use, so listing names imports no torch model code;
3. installed plug-ins: the entry point group ``codesign.<kind>`` (``codesign.spaces``,
   ``codesign.evaluators``, ``codesign.exporters``, ``codesign.cost_models``) of any distribution
   on ``sys.path``, read through ``importlib.metadata`` on every lookup (a distribution installed
   while the process runs is seen). A plug-in cannot shadow a built-in name.

Devices and back-ends are data, not code: a catalog YAML file each (``configs/devices``,
``configs/backends``, or a user's device YAML by path), and a device's traits are its fields
(``DeviceSpec.is_this_machine``), so they need no registry here.

Nothing dispatches on a space's name or on ``hasattr``: a search space's defaults (its
evaluator, exporter, measurement reader and program builder for ``codesign measure``) are the
fields of its ``SpaceEntry``.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from importlib.metadata import entry_points
from typing import (TYPE_CHECKING, Any, Callable, Generic, Iterable, Protocol, Sequence, TypeVar,
                    runtime_checkable)

if TYPE_CHECKING:  # annotations only: the registry imports no implementation up front
    from pathlib import Path

    from codesign.cost_models.backends import BackendSpec
    from codesign.cost_models.base import CostModel
    from codesign.cost_models.devices import DeviceSpec
    from codesign.evaluation.base import Evaluator
    from codesign.pareto_member import ParetoMember
    from codesign.search_spaces.base import SearchSpace

T = TypeVar("T")


class UnknownName(LookupError):
    """A name no registry source knows; ``valid`` lists the names that are."""

    def __init__(self, kind: str, name: str, valid: Sequence[str]) -> None:
        super().__init__(f"unknown {kind} {name!r}; valid: {', '.join(valid)}")
        self.kind, self.name, self.valid = kind, name, list(valid)


def resolve(ref: Any) -> Any:
    """The object a ``"module:attr"`` reference names (``attr`` may be dotted); any other value
    is returned as it is."""
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    obj = import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    """Names -> implementations of one extension point (see the module docstring)."""

    def __init__(self, kind: str, builtins: dict[str, str],
                 adapt: Callable[[str, Any], T] | None = None) -> None:
        self.kind, self.group = kind, f"codesign.{kind}"
        self._builtins = dict(builtins)
        self._registered: dict[str, Any] = {}
        self._loaded: dict[str, T] = {}
        # what an entry point loads may be a shorthand (a bare space factory): made a T here
        self._adapt = adapt or (lambda name, obj: obj)

    def register(self, name: str, obj: Any) -> None:
        """Add ``name`` for this process (it shadows a plug-in, not a built-in)."""
        if name in self._builtins:
            raise ValueError(f"{self.kind} {name!r} is built in")
        self._registered[name] = obj
        self._loaded.pop(name, None)

    def unregister(self, name: str) -> None:
        self._registered.pop(name, None)
        self._loaded.pop(name, None)

    def _plugins(self) -> dict[str, Any]:
        return {ep.name: ep for ep in entry_points(group=self.group)
                if ep.name not in self._builtins}

    def names(self) -> list[str]:
        """Every known name: built-ins first (in their order), then the others sorted."""
        others = sorted((set(self._registered) | set(self._plugins())) - set(self._builtins))
        return [*self._builtins, *others]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def get(self, name: str) -> T:
        """The implementation ``name`` stands for. Raises UnknownName."""
        if name in self._loaded:
            return self._loaded[name]
        if name in self._builtins:
            obj = resolve(self._builtins[name])
        elif name in self._registered:
            obj = self._registered[name]
        else:
            plugin = self._plugins().get(name)
            if plugin is None:
                raise UnknownName(self.kind.rstrip("s").replace("_", " "), name, self.names())
            obj = plugin.load()
        loaded = self._loaded[name] = self._adapt(name, obj)
        return loaded

    def items(self) -> Iterable[tuple[str, T]]:
        for name in self.names():
            yield name, self.get(name)


# ------------------------------------------------------------------------------ protocols
class SpaceBuilder(Protocol):
    def __call__(self, backend: "BackendSpec", device: "DeviceSpec | None",
                 threads: tuple[int, ...] | None, max_formats: int) -> "SearchSpace":
        """The space for ``backend``. ``threads`` fixes the thread choices (None: the device's
        own, see ``codesign.context.threads_choices``); ``max_formats`` bounds a member's
        formats where the space has formats (others ignore it)."""


class EvaluatorFactory(Protocol):
    def __call__(self, space: "SearchSpace", *, seed: int,
                 progress: Callable[[str], Any]) -> "Evaluator":
        """An evaluator of ``space``'s candidates (the contract of
        ``codesign.evaluation.base.Evaluator``). ``seed`` is the search's ``--seed``; an
        evaluator that trains may keep its space file's own seed instead. ``progress(label)``
        returns a training progress reporter or None."""


class MeasurementReader(Protocol):
    """How ``codesign calibrate`` reads a space's measurement CSV: ``column`` holds one
    architecture per row, ``parse(text)`` makes it a candidate (ValueError on bad text), and
    ``lower(candidate)`` its op list (the same as the space's ``to_ops``)."""

    column: str

    def parse(self, text: str) -> Any: ...

    def lower(self, candidate: Any) -> Sequence[Any]: ...


class Exporter(Protocol):
    """Turns a finished run's Pareto members into deployable programs.

    ``open(run_dir, evaluator)`` reads the run (``run.json``, ``pareto.json``) and returns the
    object ``export_member`` takes, with its pareto.json in ``run.pareto``; ``evaluator``
    is a caller's evaluator to build the members with (None: the one the run recorded).
    ``export_member(run, member, out, formats, log)`` writes ``out/`` for one member (a
    ``codesign.pareto_member.ParetoMember``) and returns a
    ``codesign.export.run.MemberResult``; it raises on failure (the caller records the member
    as failed with the reason and goes on)."""

    def open(self, run_dir: "Path", evaluator: Any = None) -> Any: ...

    def export_member(self, run: Any, member: "ParetoMember", out: "Path",
                      formats: Sequence[str], log: Callable[[str], None]) -> Any: ...


@runtime_checkable
class CostModelFactory(Protocol):
    def __call__(self, device: "DeviceSpec", backend: "BackendSpec", *, threads: int,
                 path: "Path | None" = None) -> "CostModel":
        """A ``codesign.cost_models.base.CostModel`` pricing ``device`` through ``backend`` at
        ``threads`` threads; ``path`` a saved model file for the kinds that are fitted."""


@dataclass(frozen=True)
class SpaceEntry:
    """A registered search space and its defaults.

    ``build`` makes the space (``SpaceBuilder``). ``space_type``: the class (or its
    ``"module:Class"`` reference) of the spaces ``build`` returns: a ``--space MODULE:FACTORY``
    space of that class (or a subclass) gets these defaults too. ``evaluator`` / ``exporter``:
    names in ``EVALUATORS`` / ``EXPORTERS`` (None: the user passes ``--evaluator``; export is
    refused). ``reader``: a zero-argument callable returning its ``MeasurementReader`` for
    ``codesign calibrate`` (None: calibrate does not read this space). ``timed(space, threads)``:
    the space with its thread choice fixed, whose candidates ``codesign measure`` and ``bundle``
    build as torch programs (None: not measurable on this machine).
    """

    name: str
    build: SpaceBuilder
    space_type: Any = None
    evaluator: str | None = None
    exporter: str | None = None
    reader: Callable[[], MeasurementReader] | None = None
    timed: Callable[["SearchSpace", int], "SearchSpace"] | None = None

    @property
    def space_ref(self) -> str | None:
        t = self.space_type
        return t if isinstance(t, str) or t is None else f"{t.__module__}:{t.__qualname__}"


def _space_entry(name: str, obj: Any) -> SpaceEntry:
    """An entry point may name a ``SpaceEntry`` or, as ``--space MODULE:FACTORY`` does, a bare
    factory ``f(backend) -> SearchSpace`` (no defaults: the user passes ``--evaluator``)."""
    if isinstance(obj, SpaceEntry):
        return obj
    if not callable(obj):
        raise TypeError(f"space plug-in {name!r} is a {type(obj).__name__}, not a SpaceEntry "
                        "or a factory")
    return SpaceEntry(name, lambda backend, device, threads, max_formats: obj(backend))


SPACES: Registry[SpaceEntry] = Registry("spaces", {
    name: f"codesign.builtins:{name.upper()}" for name in
    ("mbconv", "nasbench201", "fbnet", "transformer")}, _space_entry)
EVALUATORS: Registry[EvaluatorFactory] = Registry("evaluators", {
    "supernet": "codesign.builtins:supernet_evaluator",
    "perplexity": "codesign.builtins:perplexity_evaluator"})
EXPORTERS: Registry[Exporter] = Registry("exporters", {
    "supernet": "codesign.builtins:SUPERNET_EXPORTER",
    "transformer": "codesign.builtins:TRANSFORMER_EXPORTER"})
COST_MODELS: Registry[CostModelFactory] = Registry("cost_models", {
    "analytic": "codesign.builtins:analytic_cost_model",
    "learned": "codesign.builtins:learned_cost_model",
    "hybrid": "codesign.builtins:hybrid_cost_model"})


def entry_of(space: "SearchSpace") -> SpaceEntry | None:
    """The entry ``space`` was registered under (its ``name``), else the one whose
    ``space_type`` it is an instance of (nearest class first: a ``MODULE:FACTORY`` space
    returning a registered type gets that type's defaults), else None."""
    if getattr(space, "name", None) in SPACES:
        return SPACES.get(space.name)
    by_ref = {}
    for _, entry in SPACES.items():
        if entry.space_ref is not None:
            by_ref.setdefault(entry.space_ref, entry)
    for cls in type(space).__mro__:
        entry = by_ref.get(f"{cls.__module__}:{cls.__qualname__}")
        if entry is not None:
            return entry
    return None


def space_entry(name: str) -> SpaceEntry | None:
    """The entry registered as ``name``, or None (a ``MODULE:FACTORY`` reference)."""
    return SPACES.get(name) if name in SPACES else None
