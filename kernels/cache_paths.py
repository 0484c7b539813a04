"""The one directory codesign keeps things in between runs, whatever the current directory.

``platformdirs.user_cache_dir("codesign")`` (``~/.cache/codesign`` on Linux, honouring
``$XDG_CACHE_HOME``; ``~/Library/Caches/codesign`` on macOS), or ``$CODESIGN_CACHE_DIR`` when set.
One sub-folder per kind of entry:

- ``supernets``: trained supernet weights (MBConv and the LM), and LM training checkpoints;
- ``tile_tuner``: the tile tuner's measurements and decisions (one JSON per host);
- ``kernel_bench``: the host probe's and kernel benchmarks' records (one JSON per host);
- ``models``: learned / hybrid cost models (``codesign calibrate --save`` targets for search).

Everything in it can be deleted; it is rebuilt (trained, measured) on demand. This module is in
``kernels`` because every other package may import it.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "KINDS", "cache_dir"]

CACHE_ENV = "CODESIGN_CACHE_DIR"
KINDS = ("supernets", "tile_tuner", "kernel_bench", "models")


def cache_dir(kind: str | None = None) -> Path:
    """The user cache directory (absolute), or its sub-folder for ``kind`` (one of ``KINDS``).

    Not created here: writers create what they write.
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        root = Path(env).expanduser().absolute()
    else:
        import platformdirs

        root = Path(platformdirs.user_cache_dir("codesign", appauthor=False))
    if kind is None:
        return root
    if kind not in KINDS:
        raise ValueError(f"unknown cache kind {kind!r}; valid: {', '.join(KINDS)}")
    return root / kind
