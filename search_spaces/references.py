"""``MODULE:NAME`` references to user code (``--task``, ``--model``, ``--space``, ...).

One importer for every option that names a user's factory, so they all resolve the same way:
the current directory is importable (a user's ``mypkg/data.py`` next to where they run the
command), ``NAME`` may be dotted, and the result must be callable. Callers check the reference's
form themselves (their usage lines differ) and prefix the message with the option they read.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Callable


class UnresolvedReference(ValueError):
    """The module does not import, lacks the attribute, or the attribute is not callable."""


def import_callable(module_name: str, attr: str) -> Callable:
    """``module_name.attr`` (``attr`` may be dotted), imported with the current directory on
    ``sys.path``; UnresolvedReference with a one-line message when that fails."""
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise UnresolvedReference(f"cannot import module {exc.name!r}") from None
    except Exception as exc:  # the user's module failed while importing
        raise UnresolvedReference(f"importing {module_name} failed: "
                                  f"{type(exc).__name__}: {exc}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UnresolvedReference(f"module {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UnresolvedReference(f"{attr} in {module_name} is not callable")
    return obj
