"""Accuracy of MBConv candidates from the trained weight-sharing supernet.

Per candidate (deterministic):
1. extract the static subnet of its architecture from the supernet (cached trained weights);
2. prune every layer the op list marks sparse (magnitude, to its exact pattern);
3. one calibration pass over a fixed batch of *training* images, run through the op list with
   float weights: BatchNorm statistics are reset and re-estimated (pruning and the subnet's own
   widths change them; OFA's BN recalibration) while min/max observers record the range of every
   static int8 activation (PT2E-style calibration);
4. fold BatchNorm into the layers, fake-quantize weights to each op's precision;
5. run the split through the op list with activation fake quantization, count correct top-1.
The precisions, sparsity patterns, fused activations and precision boundaries all come from
``space.to_ops(candidate, eval_input_shape)``, matched to layers by name: what is priced is
what is evaluated.

The evaluator is cheap to pickle (it holds the space and a few numbers, never the supernet, the
data or open files) and rebuilds its state lazily, so it runs inside Ray workers;
``SupernetEvaluator.rebuild(config, backend_name, seed)`` reconstructs it from those alone.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from codesign.evaluation.base import (AccuracyResult, Evaluator, check_split,
                                      result_from_correct)
from codesign.evaluation.fake_quant import OpListExecutor
from codesign.evaluation.pruning import prune_to_ops
from codesign.search_spaces.mbconv import Candidate, MBConvConfig, MBConvSpace
from codesign.search_spaces.mbconv_supernet import (MBConvSubnet, MBConvSupernet, TrainProgress,
                                                    check_arch, extract_subnet)
from codesign.search_spaces.mbconv_training import (TrainConfig, cache_key, get_trained_supernet,
                                                     train_config_for)
from codesign.search_spaces.tasks import TaskData, load_task, reference_model


class SupernetEvaluator(Evaluator):
    """``Evaluator`` for ``MBConvSpace`` candidates (see the module docstring).

    Args:
        space: the space whose ``to_ops`` gives each candidate's layers and precisions.
        seed: seeds the supernet training, the data split, the calibration images and the
            bootstrap; the same seed gives the same results. None: the space file's ``seed``
            (the search's ``--seed`` seeds its sampler only, never the data or the weights).
        calib_images: training images in the single calibration batch (BN + activation ranges).
        eval_batch: images per forward pass when scoring a split (bounds memory).
        train: supernet training hyperparameters (None: ``TrainConfig()``, the cached default;
            for a user task, with its own overrides). The data is always the space's task
            (``space.config.task``): a ``train`` naming another is set to it.
        progress: called with ``TrainProgress`` while the supernet trains or loads (not pickled).
        cache_size: prepared (calibrated, quantized) candidates kept in memory, so scoring one
            candidate on val then test calibrates once.
        finetuned_dir: where fine-tuned members' weights live (``RUN/finetuned``): a candidate
            with a file there is scored and built from it instead of the supernet's slice.
    """

    name = "supernet"

    def __init__(self, space: MBConvSpace, *, seed: int | None = None, calib_images: int = 128,
                 eval_batch: int = 256, train: TrainConfig | None = None,
                 progress: Callable[[TrainProgress], None] | None = None,
                 cache_size: int = 2, finetuned_dir: Path | None = None) -> None:
        if calib_images < 1 or eval_batch < 1:
            raise ValueError("calib_images and eval_batch must be positive")
        self.space = space
        self.seed = int(space.config.seed if seed is None else seed)
        self.calib_images = int(calib_images)
        self.eval_batch = int(eval_batch)
        self.train = train_config_for(space.config.task, train)
        self.progress = progress
        self.cache_size = int(cache_size)
        self.finetuned_dir = Path(finetuned_dir) if finetuned_dir is not None else None
        self._reset_state()

    def _reset_state(self) -> None:
        self._net: MBConvSupernet | None = None
        self._data: TaskData | None = None
        self._prepared: OrderedDict[str, tuple[MBConvSubnet, OpListExecutor]] = OrderedDict()
        self._results: dict[tuple[str, str], AccuracyResult] = {}

    # -------------------------------------------------------------- pickling / rebuilding
    @classmethod
    def rebuild(cls, config: MBConvConfig, backend_name: str, seed: int = 0,
                threads_choices: tuple[int, ...] = (1,), max_formats: int = 3,
                **kwargs: Any) -> "SupernetEvaluator":
        """The evaluator for space ``config`` on back-end ``backend_name`` (in any process)."""
        from codesign.cost_models.backends import load_backend

        space = MBConvSpace(load_backend(backend_name), threads_choices=threads_choices,
                            config=config, max_formats=max_formats)
        return cls(space, seed=seed, **kwargs)

    def __reduce__(self):
        kwargs = {"calib_images": self.calib_images, "eval_batch": self.eval_batch,
                  "train": self.train, "cache_size": self.cache_size,
                  "max_formats": self.space.max_formats, "finetuned_dir": self.finetuned_dir}
        return (_rebuild, (self.space.config, self.space.backend.name, self.seed,
                           self.space.threads_choices, kwargs))

    # -------------------------------------------------------------- lazy state
    def prepare(self) -> None:
        """Train (or load from the disk cache) the supernet and load the task data."""
        self.supernet()
        self.data()

    def shared_state_key(self) -> str:
        """The supernet's cache key: same space config, seed and training, same weights."""
        return cache_key(self.space.config, self.seed, self.train)

    def shared_state(self) -> dict[str, torch.Tensor]:
        """The trained supernet's weights (trained now, or loaded from the disk cache)."""
        return self.supernet().state_dict()

    def use_shared_state(self, key: str, state: dict[str, torch.Tensor]) -> None:
        """Take the supernet's weights from ``state`` instead of the disk cache or training."""
        if key != self.shared_state_key():
            raise ValueError(f"shared supernet {key!r} is not this evaluator's "
                             f"({self.shared_state_key()!r}): another space, seed or training")
        with torch.random.fork_rng(devices=[]):  # the init is overwritten: spare the RNG
            net = MBConvSupernet(self.space.config, dropout=self.train.dropout)
        net.load_state_dict(state)
        self._net = net.eval()

    def supernet(self) -> MBConvSupernet:
        if self._net is None:
            self._net = get_trained_supernet(self.space.config, self.seed, train=self.train,
                                             progress=self.progress)
        return self._net

    def data(self) -> TaskData:
        if self._data is None:
            hw = tuple(self.space.eval_input_shape[2:])
            self._data = load_task(self.train.task, hw, self.seed)
        return self._data

    def reference(self) -> dict:
        """The classical model a member must beat on the same split (its val accuracy is the
        search's default accuracy floor): ``{"model", "accuracy", "test_accuracy"}``."""
        return reference_model(self.train.task, self.seed)

    def calibration_batch(self) -> torch.Tensor:
        """The fixed training images every candidate is calibrated on."""
        x = self.data().x_train
        gen = torch.Generator().manual_seed(self.seed + 1)
        idx = torch.randperm(len(x), generator=gen)[:self.calib_images]
        return x[idx]

    # -------------------------------------------------------------- per candidate
    def _check(self, candidate: Candidate) -> None:
        if not isinstance(candidate, Candidate):
            raise ValueError(f"expected an MBConv Candidate, got "
                             f"{type(candidate).__module__}.{type(candidate).__name__}")
        check_arch(self.space.config, candidate.arch)

    def _prepare_candidate(self, candidate: Candidate) -> tuple[MBConvSubnet, OpListExecutor]:
        self._check(candidate)
        key = candidate.key()
        if key in self._prepared:
            self._prepared.move_to_end(key)
            return self._prepared[key]
        ops = self.space.to_ops(candidate, self.space.eval_input_shape)
        subnet = self._finetuned_subnet(candidate) or extract_subnet(self.supernet(), candidate)
        prune_to_ops(subnet, ops)
        executor = OpListExecutor(
            subnet, ops, symmetric_int8=self.space.backend.int8_activations == "symmetric")
        executor.calibrate([self.calibration_batch()])
        executor.freeze()
        self._prepared[key] = (subnet, executor)
        while len(self._prepared) > self.cache_size:
            self._prepared.popitem(last=False)
        return subnet, executor

    def executor(self, candidate: Candidate) -> OpListExecutor:
        """The calibrated, fake-quantized model ``candidate`` is scored with (its op list at
        the evaluation shape): the reference an exported program is checked against."""
        return self._prepare_candidate(candidate)[1]

    def evaluate(self, candidate: Candidate, *, split: str = "val") -> AccuracyResult:
        """Top-1 accuracy of ``candidate`` as priced (pruned, quantized) on ``split``."""
        check_split(split)
        self._check(candidate)
        key = (candidate.key(), split)
        if key not in self._results:
            self._results[key] = result_from_correct(self.correctness(candidate, split), split,
                                                     seed=self.seed)
        return self._results[key]

    def correctness(self, candidate: Candidate, split: str = "val") -> np.ndarray:
        """Per-example top-1 correctness (bool) of ``candidate`` on ``split``: what paired
        comparisons of two candidates on the same images need."""
        check_split(split)
        _, executor = self._prepare_candidate(candidate)
        x, y = self.data().split(split)
        correct = []
        for start in range(0, len(y), self.eval_batch):
            logits = executor(x[start:start + self.eval_batch])
            correct.append((logits.argmax(dim=1) == y[start:start + self.eval_batch]).numpy())
        return np.concatenate(correct)

    # -------------------------------------------------------------- fine-tuning
    def finetuned_path(self, candidate: Candidate) -> Path | None:
        if self.finetuned_dir is None:
            return None
        return self.finetuned_dir / f"{candidate.key()}.safetensors"

    def _finetuned_subnet(self, candidate: Candidate) -> MBConvSubnet | None:
        path = self.finetuned_path(candidate)
        if path is None or not path.is_file():
            return None
        from safetensors.torch import load_file

        subnet = MBConvSubnet(self.space.config, candidate.arch)
        subnet.load_state_dict(load_file(str(path)))
        return subnet.eval()

    def finetune(self, candidate: Candidate, steps: int, *,
                 progress: Callable[[TrainProgress], None] | None = None) -> bool:
        """Fine-tune ``candidate`` in its own formats for ``steps`` steps (see
        ``codesign.evaluation.finetune``) and keep the weights in ``finetuned_dir``; later
        scores and ``build_deployable`` use them. False (nothing done) when its weights are
        already there. Raises ValueError without a ``finetuned_dir``."""
        from safetensors.torch import save_file

        from codesign.evaluation.finetune import finetune_subnet

        self._check(candidate)
        path = self.finetuned_path(candidate)
        if path is None:
            raise ValueError("fine-tuning needs a finetuned_dir to keep the weights in")
        key = candidate.key()
        self._prepared.pop(key, None)  # scored before from the supernet's slice
        for split in ("val", "test"):
            self._results.pop((key, split), None)
        if path.is_file():
            return False
        subnet = finetune_subnet(self.supernet(), candidate, self.data(), steps,
                                 seed=self.seed, progress=progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in subnet.state_dict().items()}, str(tmp))
        tmp.replace(path)
        return True

    def build_deployable(self, candidate: Candidate) -> nn.Module:
        """The float subnet to export: pruned (masks baked into the weights), BatchNorm
        recalibrated on training data, in eval mode; module names are the op names.
        Quantization is left to the exporter (the evaluation's weight quantization is not
        applied here)."""
        subnet, _ = self._prepare_candidate(candidate)
        return copy.deepcopy(subnet).eval()


def _rebuild(config: MBConvConfig, backend_name: str, seed: int,
             threads_choices: tuple[int, ...], kwargs: dict[str, Any]) -> SupernetEvaluator:
    return SupernetEvaluator.rebuild(config, backend_name, seed, threads_choices, **kwargs)
