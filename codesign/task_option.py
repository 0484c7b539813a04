"""``--task MODULE:FACTORY``: a search on the user's own data, and the same data at export.

The data contract (``TaskSplits``) is in ``codesign.search_spaces.tasks``. Here the reference
is loaded and checked once, up front, and every problem becomes one ``BadInput`` line (exit 2):
a reference that is not ``MODULE:FACTORY``, a module that does not import, a factory that
raises or returns something else, splits that disagree, images the space cannot take. The task
shapes the MBConv space (input channels and resolution, classes); the built-in evaluator then
trains, scores and builds the reference model on it. A run records the reference in run.json's
``options`` (``--resume`` checks it) and the data's sha256 as ``task_sha256`` (the same
reference over changed data is another study), so export re-loads the same data.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from codesign.userinput import BadInput

if TYPE_CHECKING:  # the data modules import torch: only a search or export with a task pays
    from codesign.search_spaces.tasks import UserTask


def load_user_task(ref: str, what: str = "--task") -> UserTask:
    """The checked task ``ref``; BadInput naming ``what`` and the problem."""
    from codesign.search_spaces.tasks import TaskError, is_user_task, user_task

    if not is_user_task(ref):
        raise BadInput(f"{what} {ref!r} must be MODULE:FACTORY, e.g. mypkg.data:load (leave "
                       "--task out for the built-in digits)")
    try:
        return user_task(ref)
    except TaskError as exc:
        raise BadInput(f"{what} {ref!r}: {exc}") from None


def bind_task(space, ref: str | None, *, what: str = "--task"):
    """``(space shaped to the task, the task)``; ``(space, None)`` without a task.

    Only MBConv spaces take a task: their supernet is what trains on it."""
    if ref is None:
        return space, None
    task = load_user_task(ref, what)
    from codesign.search_spaces.mbconv import MBConvSpace
    from codesign.search_spaces.mbconv_training import config_for_task
    from codesign.search_spaces.tasks import TaskError

    if not isinstance(space, MBConvSpace):
        raise BadInput(f"{what} {ref!r}: space {space.name!r} has no supernet to train on it "
                       "(--task applies to MBConv spaces)")
    try:
        config = config_for_task(space.config, ref)
    except TaskError as exc:
        raise BadInput(f"{what} {ref!r}: {exc}") from None
    try:  # rebuilt, not patched: the space derives its lowering and params from the config
        bound = type(space)(space.backend, threads_choices=space.threads_choices,
                            config=config, max_formats=space.max_formats)
    except TypeError as exc:
        raise BadInput(f"{what} {ref!r}: space {space.name!r} cannot be rebuilt for the task's "
                       f"input ({type(space).__name__} takes other arguments: {exc})") from None
    bound.name = space.name
    return bound, task


def check_evaluator(ref: str | None, evaluator_ref: str | None) -> None:
    """A user ``--evaluator`` scores candidates its own way: it would never see the task."""
    if ref is not None and evaluator_ref is not None:
        raise BadInput(f"--task {ref!r} is read by the built-in evaluator; --evaluator "
                       f"{evaluator_ref!r} scores candidates its own way: give one of them")


def identity_fields(task: UserTask | None) -> dict[str, Any]:
    """run.json's record of the task: what it is and the sha256 ``--resume`` checks."""
    if task is None:
        return {}
    return {"task": task.describe(), "task_sha256": task.sha256}


def bind_run_task(run_dir: Path, identity: dict[str, Any], space):
    """A finished run's space shaped to its task again (export): the same reference, and data
    with the sha256 the run recorded; BadInput in one line otherwise."""
    ref = identity.get("options", {}).get("task")
    if ref is None:
        return space
    bound, task = bind_task(space, ref, what=f"{run_dir}: the run's --task")
    recorded = identity.get("task_sha256")
    if recorded is not None and recorded != task.sha256:
        raise BadInput(f"{run_dir}: the data behind --task {ref!r} changed since the search "
                       f"(sha256 {task.sha256[:12]}, the run's {recorded[:12]}); export would "
                       "verify on other data")
    return bound
