"""codesign: hardware-aware model/kernel co-design search for on-device AI.

The repository keeps ``kernels/``, ``cost_models/``, ``search_spaces/`` and ``configs/`` beside
``codesign/``; pyproject.toml installs them as ``codesign.kernels``, ``codesign.cost_models``,
``codesign.search_spaces`` and ``codesign.configs`` (setuptools ``package-dir``), so that no
generic top-level name is claimed (Hugging Face ``transformers`` depends on a PyPI package named
``kernels``).

Imported from a checkout (``python -m pytest`` from the repository root, ``PYTHONPATH=<root>``,
an editable install), this package is the ``codesign/`` folder, which has no such subfolders, and
the root may be on ``sys.path``. Two small import hooks then keep each folder to one name:

* ``codesign.<name>`` resolves to the sibling folder ``<name>/`` (put first on ``sys.meta_path``,
  so that an editable install of another checkout cannot mix in its folders);
* the checkout root, as a ``sys.path`` entry, no longer offers the four folders as top-level
  modules: ``import kernels`` finds the PyPI package (or nothing), never this project's folder
  under a second name.

An installed (non-editable) copy has the subfolders in the package: nothing is hooked.
"""
from __future__ import annotations

import os
import sys
from importlib.machinery import (BYTECODE_SUFFIXES, EXTENSION_SUFFIXES, SOURCE_SUFFIXES,
                                 ExtensionFileLoader, FileFinder, SourceFileLoader,
                                 SourcelessFileLoader)
from importlib.util import spec_from_file_location

_FOLDERS = ("kernels", "cost_models", "search_spaces", "configs")
_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)


class _SiblingFinder:
    """``codesign.<name>`` -> the checkout's ``<name>/`` folder, for the four folders only."""

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        parent, _, name = fullname.rpartition(".")
        if parent != __name__ or name not in _FOLDERS:
            return None
        folder = os.path.join(_ROOT, name)
        return spec_from_file_location(fullname, os.path.join(folder, "__init__.py"),
                                       submodule_search_locations=[folder])


class _RootFinder(FileFinder):
    """The checkout root's path-entry finder, less the four folders as top-level modules."""

    def find_spec(self, fullname, target=None):
        if fullname in _FOLDERS:
            return None
        return super().find_spec(fullname, target)


def _root_hook(path: str):
    if os.path.abspath(path or os.getcwd()) != _ROOT:
        raise ImportError("not the checkout root")
    return _RootFinder(path, (ExtensionFileLoader, EXTENSION_SUFFIXES),
                       (SourceFileLoader, SOURCE_SUFFIXES),
                       (SourcelessFileLoader, BYTECODE_SUFFIXES))


def _hook_checkout() -> None:
    if _SiblingFinder not in sys.meta_path:
        sys.meta_path.insert(0, _SiblingFinder)
    if _root_hook not in sys.path_hooks:
        sys.path_hooks.insert(0, _root_hook)
    for entry in [e for e in sys.path_importer_cache if os.path.abspath(e or ".") == _ROOT]:
        del sys.path_importer_cache[entry]  # rebuilt through _root_hook on the next import


if not os.path.isdir(os.path.join(_HERE, "kernels")) and \
        os.path.isfile(os.path.join(_ROOT, "kernels", "__init__.py")):
    _hook_checkout()
