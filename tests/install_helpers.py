"""How the project's folders are imported: each under its installed name only."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

FOLDERS = ("kernels", "cost_models", "search_spaces", "configs")
ROOT = Path(__file__).resolve().parent.parent


def project_dirs() -> dict[str, set[Path]]:
    """Per folder name, where this project's copy lives: the checkout's folder and the
    directory ``codesign.<name>`` was imported from (the same in a checkout)."""
    return {name: {(ROOT / name).resolve(),
                   Path(importlib.import_module(f"codesign.{name}").__file__).resolve().parent}
            for name in FOLDERS}


def bare_project_modules(modules=None) -> list[str]:
    """Modules in ``modules`` (default ``sys.modules``) named ``kernels``, ``cost_models``,
    ``search_spaces`` or ``configs`` (or below) whose file is one of this project's: the folder
    imported a second time under a bare name. Another package of that name (PyPI's
    ``kernels``) is not counted."""
    dirs = project_dirs()
    found = []
    for name, module in list((sys.modules if modules is None else modules).items()):
        top = name.partition(".")[0]
        where = getattr(module, "__file__", None) or next(iter(getattr(module, "__path__", [])),
                                                          None)
        if top not in dirs or where is None:
            continue
        if any(Path(where).resolve().is_relative_to(d) for d in dirs[top]):
            found.append(name)
    return sorted(found)
