"""A small MBConv space (32x32 images, narrow widths) and a tiny-trained supernet for export tests.

``small_xnnpack_space`` / ``small_codesign_space`` are ``--space MODULE:FACTORY`` factories, so a
run directory written by a test names them and ``codesign export`` rebuilds the same space.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from codesign.search_spaces.mbconv import MBConvSpace, load_mbconv_config
from codesign.search_spaces.mbconv_training import TrainConfig

TINY_TRAIN = TrainConfig(batch_size=16, max_steps=40, warmup_steps=5)
SHAPE = (1, 3, 32, 32)


def small_config():
    cfg = load_mbconv_config()
    stages = tuple(dataclasses.replace(s, widths=(16, 24), depths=(1, 2), kernels=(3, 5),
                                       expands=(2, 3)) for s in cfg.stages)
    return dataclasses.replace(cfg, name="small", stem_widths=(8, 16), stages=stages,
                               head_widths=(32, 64), feature_width=64, sha256="",
                               deploy_input_shape=SHAPE, eval_input_shape=SHAPE)


def small_space(backend) -> MBConvSpace:
    return MBConvSpace(backend, threads_choices=(1,), config=small_config())


def write_run(run_dir: Path, space_ref: str, backend: str, members: list[dict]) -> Path:
    """A run directory as ``codesign search`` leaves it (identity + Pareto front)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps({
        "device": "pixel8", "backend": backend, "budget_s": 0.01, "space": space_ref,
        "space_sha256": "", "cost_model": "analytic", "seed": 0}))
    (run_dir / "pareto.json").write_text(json.dumps({
        "device": "pixel8", "backend": backend, "budget_s": 0.01, "members": members}))
    return run_dir
