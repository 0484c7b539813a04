"""A plug-in "installed" for one test: a module plus the ``.dist-info`` folder an installer
would write (``METADATA`` and ``entry_points.txt``), on ``sys.path``. That is all
``importlib.metadata`` needs to see a distribution, so no module of the project is touched."""
from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path
from typing import Iterable


def install_plugin(root: Path, monkeypatch, module: str, source: str,
                   entry_points: dict[str, Iterable[tuple[str, str]]]) -> None:
    """Write ``module``.py (``source``) and its distribution's metadata into ``root`` and put
    ``root`` on ``sys.path``; ``entry_points``: group -> (name, "module:attr") pairs."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("\n".join(
        f"[{group}]\n" + "".join(f"{name} = {ref}\n" for name, ref in pairs)
        for group, pairs in entry_points.items()))
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()


def forget_plugin(module: str, name: str, registries) -> None:
    """Drop what the registries and ``sys.modules`` loaded from the plug-in."""
    for registry in registries:
        registry.unregister(name)
    sys.modules.pop(module, None)
