"""A small MBConv space for measurement tests (``--space tests.measure_helpers:tiny_mbconv``).

The MBConv family with two shallow stages at a 32x32 input: lowering a candidate to ExecuTorch
takes a couple of seconds instead of ~30, and one execution well under a millisecond."""
from __future__ import annotations

import dataclasses

from codesign.search_spaces.mbconv import MBConvSpace, StageConfig, load_mbconv_config


def tiny_config():
    cfg = load_mbconv_config()
    stages = (StageConfig((16, 24), (1, 2), (3, 5), (3, 4), 2, "relu"),
              StageConfig((24, 32), (1, 2), (3, 5), (3, 4), 2, "hardswish"))
    return dataclasses.replace(cfg, name="mbconv-tiny", stages=stages,
                               deploy_input_shape=(1, 3, 32, 32), eval_input_shape=(1, 3, 32, 32),
                               head_widths=(64, 96), feature_width=128, sha256="tiny")


def tiny_mbconv(backend):
    return MBConvSpace(backend, threads_choices=(1,), config=tiny_config())
