"""Built-in tasks: small image-classification data sets that ship offline.

A task is split once, deterministically and stratified, into train / val / test. Only the train
split may be used to fit anything (weights, BatchNorm statistics, activation scales, input
normalisation); validation drives the search; test is reported for front members only.

``digits`` is scikit-learn's ``load_digits`` (1797 grey 8x8 images of the digits 0-9, bundled
with scikit-learn, so nothing is downloaded). Images are scaled to [0, 1], upsampled bilinearly to
the space's evaluation resolution, replicated to 3 channels (the search space's stem reads RGB)
and normalised with the mean and standard deviation of the train split.

Your own data: ``codesign search ... --task MODULE:FACTORY``. ``FACTORY()`` (no arguments)
returns a ``TaskSplits``:

* ``train``, ``val``, ``test``: each either a pair ``(images, labels)`` of tensors (or arrays),
  images ``N,C,H,W`` (or ``N,H,W``: one channel) and labels ``N`` integers, or a
  ``torch.utils.data.Dataset`` whose items are ``(image C,H,W or H,W, label)``. The splits are
  used as given (not re-split): train fits the weights and statistics, val drives the search,
  test is reported for front members and the exported programs;
* ``num_classes``: labels are integers in ``[0, num_classes)``; at least 2 classes in train;
* ``name`` (optional): shown in the report;
* ``training`` (optional): ``TrainConfig`` fields to override for this data (``epochs``,
  ``batch_size``, ``shift_px``, ``max_steps``, ...): how long to train and how far to shift
  images depends on the data.

Every split must have the same C, H and W, finite pixel values, and as many labels as images.
Images are used at their own resolution and channel count (the search prices that input shape),
normalised with the train split's mean and standard deviation like ``digits``. The task is
identified by a sha256 of its data (``task_digest``): the supernet trained on it is cached under
that hash and the training config, so a renamed factory with the same data reuses it. Problems
raise ``TaskError`` (a ValueError) with a one-line message.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from codesign.search_spaces.references import UnresolvedReference, import_callable

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


class TaskError(ValueError):
    """A task that cannot be used; the message is one line, fit to show the user as is."""


@dataclass(frozen=True)
class TaskSplits:
    """What a ``--task MODULE:FACTORY`` factory returns (the contract is the module docstring)."""

    train: Any
    val: Any
    test: Any
    num_classes: int
    name: str = ""
    training: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class UserTask:
    """A user task checked and converted: raw float32 images ``N,C,H,W`` and int64 labels per
    split (before normalisation), its data's sha256 and the training overrides."""

    ref: str
    name: str
    num_classes: int
    splits: Mapping[str, tuple[torch.Tensor, torch.Tensor]]
    sha256: str
    training: Mapping[str, Any]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        return tuple(self.splits["train"][0].shape[1:])

    def describe(self) -> dict[str, Any]:
        """What run.json and pareto.json record of the task."""
        return {"ref": self.ref, "name": self.name, "sha256": self.sha256,
                "num_classes": self.num_classes, "image_shape": list(self.image_shape),
                "n": {k: len(y) for k, (_, y) in self.splits.items()}}


def is_user_task(name: str) -> bool:
    """A ``MODULE:FACTORY`` reference rather than a built-in task's name."""
    return ":" in str(name)


def _factory(ref: str) -> Callable:
    """Import ``MODULE:NAME`` (the current directory is importable, as for ``--space``)."""
    if not isinstance(ref, str) or ref.count(":") != 1 or not all(ref.split(":")):
        raise TaskError(f"must be MODULE:FACTORY (e.g. mypkg.data:load), or one of "
                        f"{', '.join(task_names())}")
    try:
        return import_callable(*ref.split(":"))
    except UnresolvedReference as exc:
        raise TaskError(str(exc)) from None


def _split_tensors(split: Any, name: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images N,C,H,W float32, labels N int64) of one split, or TaskError saying what is off."""
    if isinstance(split, torch.utils.data.Dataset):
        try:
            items = [split[i] for i in range(len(split))]
            images = [torch.as_tensor(np.asarray(x), dtype=torch.float32) for x, _ in items]
            labels = [int(y) for _, y in items]
        except Exception as exc:
            raise TaskError(f"split {name}: cannot read the Dataset's (image, label) items: "
                            f"{type(exc).__name__}: {exc}") from None
        if not images or len({tuple(x.shape) for x in images}) != 1:
            raise TaskError(f"split {name}: the Dataset is empty or its images differ in shape")
        x, y = torch.stack(images), torch.tensor(labels, dtype=torch.int64)
    elif isinstance(split, (tuple, list)) and len(split) == 2:
        try:
            x = torch.as_tensor(np.asarray(split[0]), dtype=torch.float32)
            y = torch.as_tensor(np.asarray(split[1]))
        except Exception as exc:
            raise TaskError(f"split {name}: images and labels must be tensors or arrays: "
                            f"{type(exc).__name__}: {exc}") from None
        if y.dtype.is_floating_point or y.dtype == torch.bool or y.dtype.is_complex:
            raise TaskError(f"split {name}: labels must be integers, got {y.dtype}")
        y = y.to(torch.int64)
    else:
        raise TaskError(f"split {name} must be (images, labels) or a torch Dataset, got "
                        f"{type(split).__name__}")
    if x.ndim == 3:
        x = x.unsqueeze(1)  # N,H,W: one channel
    if x.ndim != 4 or min(x.shape) < 1:
        raise TaskError(f"split {name}: images must be N,C,H,W or N,H,W, got shape "
                        f"{tuple(x.shape)}")
    if y.ndim != 1 or len(y) != len(x):
        raise TaskError(f"split {name}: {len(x)} images but labels of shape {tuple(y.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise TaskError(f"split {name}: images hold NaN or infinite values")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise TaskError(f"split {name}: labels must be in [0, {num_classes}), got "
                        f"{int(y.min())}..{int(y.max())}")
    return x.contiguous(), y.contiguous()


def _check_training(training: Any) -> dict[str, Any]:
    from codesign.search_spaces.mbconv_training import TrainConfig  # training imports tasks

    if not isinstance(training, Mapping):
        raise TaskError(f"training must be a mapping of TrainConfig fields, got "
                        f"{type(training).__name__}")
    defaults = {k: v for k, v in TrainConfig().__dict__.items() if k != "task"}
    for key, value in training.items():
        if key not in defaults:
            raise TaskError(f"training: unknown field {key!r}; valid: {', '.join(defaults)}")
        want = type(defaults[key])
        ok = isinstance(value, want) or (want is float and isinstance(value, int))
        if not ok or (isinstance(value, bool) and want is not bool):
            raise TaskError(f"training: {key} must be {want.__name__}, got {value!r}")
    return dict(training)


@functools.lru_cache(maxsize=4)
def user_task(ref: str) -> UserTask:
    """Call the factory ``ref`` and check what it returned (cached per process; the tensors
    are shared: callers must not modify them). Raises TaskError."""
    factory = _factory(ref)
    try:
        splits = factory()
    except Exception as exc:
        raise TaskError(f"the factory raised {type(exc).__name__}: {exc}") from None
    if not isinstance(splits, TaskSplits):
        raise TaskError(f"the factory returned {type(splits).__name__}, not a "
                        "codesign.search_spaces.tasks.TaskSplits")
    k = splits.num_classes
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise TaskError(f"num_classes must be an integer >= 2, got {k!r}")
    tensors = {name: _split_tensors(getattr(splits, name), name, int(k)) for name in SPLITS}
    shapes = {name: tuple(x.shape[1:]) for name, (x, _) in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise TaskError("the splits' images differ in C,H,W: " + ", ".join(
            f"{name} {'x'.join(map(str, s))}" for name, s in shapes.items()))
    if len(torch.unique(tensors["train"][1])) < 2:
        raise TaskError("the train split holds a single class")
    digest = hashlib.sha256(f"classes={int(k)}".encode())
    for name, (x, y) in tensors.items():
        digest.update(f"{name}:{tuple(x.shape)}".encode())
        digest.update(x.numpy().tobytes())
        digest.update(y.numpy().tobytes())
    return UserTask(ref, str(splits.name or ref.split(":")[1]), int(k), tensors,
                    digest.hexdigest(), _check_training(splits.training))


def task_digest(name: str) -> str:
    """The sha256 of a user task's data (what keys the supernet trained on it)."""
    return user_task(name).sha256


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
    hw = tuple(int(v) for v in input_hw)
    if len(hw) != 2 or min(hw) <= 0:
        raise ValueError(f"input_hw must be two positive integers, got {input_hw!r}")
    if is_user_task(name):
        return _load_user(name, hw, int(seed))
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(task_names())}")
    return _load(name, hw, int(seed))


@functools.lru_cache(maxsize=4)
def _load_user(ref: str, hw: tuple[int, int], seed: int) -> TaskData:
    """A user task at its own resolution (the space was shaped to it: no resampling), normalised
    with its train split's statistics."""
    task = user_task(ref)
    if task.image_shape[1:] != hw:
        raise TaskError(f"task {task.name} has {'x'.join(map(str, task.image_shape[1:]))} "
                        f"images, not the {'x'.join(map(str, hw))} asked for")
    x_train = task.splits["train"][0]
    mean, std = float(x_train.mean()), float(x_train.std())
    std = std if std > 0 else 1.0  # constant images: only centre them

    def prep(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = task.splits[split]
        return (x - mean) / std, y

    (xtr, ytr), (xva, yva), (xte, yte) = prep("train"), prep("val"), prep("test")
    return TaskData(task.name, task.num_classes, hw, seed, xtr, ytr, xva, yva, xte, yte, mean,
                    std)


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

    if is_user_task(name):  # the user's own splits, as given
        task = user_task(name)
        parts = [task.splits[split] for split in SPLITS]
        flat = np.concatenate([x.reshape(len(x), -1).numpy() for x, _ in parts])
        labels = np.concatenate([y.numpy() for _, y in parts])
        ends = np.cumsum([len(y) for _, y in parts])
        train, val, test = np.split(np.arange(ends[-1]), ends[:2])
        described = "x".join(map(str, task.image_shape))
    elif name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(task_names())}")
    else:
        images, labels, _ = _TASKS[name]()
        flat = images.reshape(len(images), -1)
        train, val, test = stratified_split(labels, seed)
        described = "x".join(map(str, images.shape[1:]))
    scaler = StandardScaler().fit(flat[train])
    model = LogisticRegression(max_iter=5000, C=1.0).fit(scaler.transform(flat[train]),
                                                         labels[train])
    score = {split: float((model.predict(scaler.transform(flat[idx])) == labels[idx]).mean())
             for split, idx in (("val", val), ("test", test))}
    return {"model": f"logistic regression on the raw {described} pixels (sklearn, C=1)",
            "accuracy": score["val"], "test_accuracy": score["test"]}
