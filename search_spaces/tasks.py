"""Built-in tasks: small image-classification data sets that ship offline.

A task is split once, deterministically and stratified, into train / val / test. Only the train
split may be used to fit anything (weights, BatchNorm statistics, activation scales, input
normalisation); validation drives the search; test is reported for front members only.

``digits`` is scikit-learn's ``load_digits`` (1797 grey 8x8 images of the digits 0-9, bundled
with scikit-learn, so nothing is downloaded). Images are scaled to [0, 1], upsampled bilinearly to
the space's evaluation resolution, replicated to 3 channels (the search space's stem reads RGB)
and normalised with the mean and standard deviation of the train split.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

SPLITS = ("train", "val", "test")


@dataclass(frozen=True, eq=False)
class TaskData:
    """One task's three splits as float32 NCHW images and int64 labels.

    ``eq=False``: instances compare (and hash) by identity; comparing tensors element-wise is
    never what a caller means. Attributes ``mean``/``std`` are the train-split statistics the
    images were normalised with (deployed models must see the same normalisation).
    """

    name: str
    num_classes: int
    input_hw: tuple[int, int]
    seed: int
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: float
    std: float

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of ``name`` in {"train", "val", "test"}; ValueError otherwise."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; valid: {', '.join(SPLITS)}")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")


def _digits() -> tuple[np.ndarray, np.ndarray, int]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0  # pixel values are 0..16
    return images, bunch.target.astype(np.int64), 10


_TASKS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray, int]]] = {"digits": _digits}


def task_names() -> list[str]:
    return sorted(_TASKS)


def stratified_split(labels: np.ndarray, seed: int, fractions=(0.6, 0.2, 0.2)
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Disjoint index arrays (train, val, test) covering ``labels``, each class split in the
    given fractions (rounded per class, remainder to train), shuffled with ``seed``."""
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) <= 0:
        raise ValueError(f"fractions must be three positive numbers summing to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_val = int(round(fractions[1] * len(idx)))
        n_test = int(round(fractions[2] * len(idx)))
        parts[1].append(idx[:n_val])
        parts[2].append(idx[n_val:n_val + n_test])
        parts[0].append(idx[n_val + n_test:])
    # a final shuffle so a split is not ordered by class (batches would be single-class)
    train, val, test = (rng.permutation(np.concatenate(p)) for p in parts)
    return train, val, test


def load_task(name: str = "digits", input_hw: tuple[int, int] = (64, 64), seed: int = 0
              ) -> TaskData:
    """The task ``name`` at resolution ``input_hw``, split with ``seed`` (60/20/20, stratified).

    Deterministic; cached per process (the tensors are shared: callers must not modify them).
    Raises ValueError for an unknown task (the message lists the valid ones).
    """
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(task_names())}")
    hw = tuple(int(v) for v in input_hw)
    if len(hw) != 2 or min(hw) <= 0:
        raise ValueError(f"input_hw must be two positive integers, got {input_hw!r}")
    return _load(name, hw, int(seed))


@functools.lru_cache(maxsize=4)
def _load(name: str, hw: tuple[int, int], seed: int) -> TaskData:
    images, labels, num_classes = _TASKS[name]()
    x = torch.from_numpy(images).unsqueeze(1)  # N,1,h,w in [0, 1]
    if x.shape[2:] != hw:
        x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
    train, val, test = stratified_split(labels, seed)
    mean = float(x[train].mean())
    std = float(x[train].std())

    def prep(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        xs = ((x[idx] - mean) / std).expand(-1, 3, -1, -1).contiguous()
        return xs, torch.from_numpy(labels[idx])

    (xtr, ytr), (xva, yva), (xte, yte) = prep(train), prep(val), prep(test)
    return TaskData(name, num_classes, hw, seed, xtr, ytr, xva, yva, xte, yte, mean, std)


@functools.lru_cache(maxsize=8)
def reference_model(name: str = "digits", seed: int = 0) -> dict:
    """The classical baseline a searched model must beat, on the same split: multinomial
    logistic regression on the task's raw pixels (standardised with train statistics, fitted on
    the train split only). Returns ``{"model", "accuracy" (val), "test_accuracy"}``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(task_names())}")
    images, labels, _ = _TASKS[name]()
    flat = images.reshape(len(images), -1)
    train, val, test = stratified_split(labels, seed)
    scaler = StandardScaler().fit(flat[train])
    model = LogisticRegression(max_iter=5000, C=1.0).fit(scaler.transform(flat[train]),
                                                         labels[train])
    score = {split: float((model.predict(scaler.transform(flat[idx])) == labels[idx]).mean())
             for split, idx in (("val", val), ("test", test))}
    h, w = images.shape[1:]
    return {"model": f"logistic regression on the raw {h}x{w} pixels (sklearn, C=1)",
            "accuracy": score["val"], "test_accuracy": score["test"]}
