"""``--task MODULE:FACTORY`` factories for tests: a small synthetic image task and broken ones.

``synthetic`` is 3 classes of one-channel 32x32 images (a bright square in a class-specific
quadrant, on noise), learnable in a few dozen steps, with a tiny training config of its own, so
a search on it trains a supernet in seconds.
"""
from __future__ import annotations

import numpy as np
import torch

from codesign.search_spaces.tasks import TaskSplits

TINY_TRAINING = {"batch_size": 16, "max_steps": 30, "warmup_steps": 5, "shift_px": 2}
HW = (32, 32)


def _images(n: int, seed: int, hw=HW, channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    x = rng.normal(0.0, 0.3, (n, channels) + hw).astype(np.float32)
    h, w = hw
    for i, cls in enumerate(labels):  # class 0: top-left, 1: top-right, 2: bottom-left
        top, left = (0, 0) if cls == 0 else (0, w // 2) if cls == 1 else (h // 2, 0)
        x[i, :, top:top + h // 2, left:left + w // 2] += 2.0
    return x, labels.astype(np.int64)


def synthetic() -> TaskSplits:
    (xtr, ytr), (xva, yva), (xte, yte) = (_images(n, s) for n, s in ((96, 1), (48, 2), (48, 3)))
    return TaskSplits((torch.from_numpy(xtr), torch.from_numpy(ytr)), (xva, yva), (xte, yte),
                      num_classes=3, name="quadrants", training=TINY_TRAINING)


class _PairDataset(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return torch.from_numpy(self.x[i]), int(self.y[i])


def synthetic_datasets() -> TaskSplits:
    """The same data as ``synthetic``, each split a torch ``Dataset``."""
    data = synthetic()
    return TaskSplits(*(_PairDataset(np.asarray(x), np.asarray(y))
                        for x, y in (data.train, data.val, data.test)),
                      num_classes=3, name="quadrants", training=TINY_TRAINING)


def raises() -> TaskSplits:
    raise RuntimeError("the data server is down")


def wrong_type():
    return {"train": None}


def mixed_shapes() -> TaskSplits:
    data = synthetic()
    x, y = _images(48, 2, hw=(32, 40))
    return TaskSplits(data.train, (x, y), data.test, num_classes=3)


def labels_out_of_range() -> TaskSplits:
    data = synthetic()
    return TaskSplits(data.train, data.val, data.test, num_classes=2)


def too_small() -> TaskSplits:
    splits = [_images(n, s, hw=(8, 8)) for n, s in ((30, 1), (15, 2), (15, 3))]
    return TaskSplits(*splits, num_classes=3)


def bad_training() -> TaskSplits:
    data = synthetic()
    return TaskSplits(data.train, data.val, data.test, num_classes=3, training={"epoch": 1})


def three_channel() -> TaskSplits:
    """RGB 40x36 (odd, non-square) images: the priced shape follows them."""
    splits = [_images(n, s, hw=(40, 36), channels=3) for n, s in ((60, 1), (30, 2), (30, 3))]
    return TaskSplits(*splits, num_classes=3, training=TINY_TRAINING)


not_callable = 42
