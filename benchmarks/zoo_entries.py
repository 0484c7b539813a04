"""The public model zoo as priceable entries: every Hugging Face ``transformers`` class of a task
mapping, built from its config class's defaults shrunk (fewer layers, narrower), random weights,
wrapped to take one float tensor and return logits. Nothing is downloaded.

``vision_entries()`` covers ``MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES``: one entry per class
(a model type that maps to several classes gives several entries). A family's entries are what
``benchmarks.zoo_coverage.price_zoo`` prices; another family adds its own ``*_entries()`` here or
in its own module.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Callable

# First: from the repository root, importing codesign keeps the checkout's kernels/ folder from
# shadowing the `kernels` package transformers imports (codesign/__init__.py).
import codesign  # noqa: F401  isort: skip

import torch
from torch import nn

IMAGE_SIZE = 224  # the input side where the config does not fix another


@dataclass(frozen=True)
class ZooEntry:
    """One model class: ``build()`` returns ``(module in eval mode, input shape)``.

    ``name`` is the class name, ``key`` the mapping key it came from (the model type)."""

    name: str
    key: str
    family: str
    build: Callable[[], tuple[nn.Module, tuple[int, ...]]] = field(compare=False, repr=False)


# Per model type: config overrides that shrink the defaults (depth first, then width), keeping
# every structural feature (stages, attention kinds, windows) so that each op still appears.
_VIT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
_CLIP_LIKE = dict(vision_config=dict(_VIT), text_config=dict(_VIT, vocab_size=1000))
_SWIN = dict(embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 1, 2, 2])
_STAGES4 = dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1])
VISION_SMALL: dict[str, dict] = {
    "beit": _VIT, "data2vec-vision": _VIT, "deit": _VIT, "ijepa": _VIT, "vit": _VIT,
    "vit_msn": _VIT, "dinov2": dict(_VIT, patch_size=16),
    "dinov2_with_registers": _VIT,
    "clip": _CLIP_LIKE, "metaclip_2": _CLIP_LIKE, "siglip": _CLIP_LIKE,
    # SigLIP 2 reads patches, up to num_patches of them: 224 / 16 = 14 x 14
    "siglip2": dict(vision_config=dict(_VIT, num_patches=196),
                    text_config=_CLIP_LIKE["text_config"]),
    "bit": dict(_STAGES4, embedding_size=16, num_groups=8),
    "convnext": _STAGES4, "convnextv2": _STAGES4, "poolformer": _STAGES4,
    "regnet": dict(_STAGES4, embedding_size=16, groups_width=8),
    "resnet": dict(hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1], embedding_size=16),
    # CvT indexes stage i's drop-path rates at i: stage i needs more than i blocks
    "cvt": dict(embed_dim=[16, 32, 64], num_heads=[1, 2, 2], depth=[1, 2, 3]),
    "dinat": dict(_SWIN, hidden_size=128), "donut-swin": dict(_SWIN, hidden_size=128),
    "swin": _SWIN, "swinv2": _SWIN,  # stage 3's second block is the shifted-window one
    "efficientnet": dict(width_coefficient=1.0, depth_coefficient=1.0, image_size=IMAGE_SIZE,
                         hidden_dim=1280),  # B0 (the default is B7 at 600x600)
    "focalnet": dict(embed_dim=16, hidden_sizes=[32, 64, 128, 128], depths=[1, 1, 1, 1]),
    "hgnet_v2": {},
    "hiera": dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2]),
    "imagegpt": dict(n_embd=64, n_layer=2, n_head=2),
    "levit": dict(hidden_sizes=[32, 64, 96], num_attention_heads=[1, 2, 3], depths=[1, 1, 1],
                  key_dim=[16, 16, 16]),
    "mobilenet_v1": dict(depth_multiplier=0.5), "mobilenet_v2": dict(depth_multiplier=0.5),
    "mobilevit": dict(hidden_sizes=[32, 48, 64], neck_hidden_sizes=[16, 16, 24, 32, 48, 64, 128]),
    "mobilevitv2": dict(width_multiplier=0.5),
    "perceiver": dict(d_latents=64, num_latents=32, num_blocks=1, num_self_attends_per_block=1,
                      num_self_attention_heads=2, num_cross_attention_heads=1, d_model=64),
    "pp_lcnet": {},
    "pvt": dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                num_attention_heads=[1, 1, 2, 2]),
    "pvt_v2": dict(depths=[1, 1, 1, 1]), "segformer": dict(depths=[1, 1, 1, 1]),
    "shieldgemma2": dict(vision_config=dict(_VIT, image_size=IMAGE_SIZE),
                         text_config=dict(hidden_size=64, num_hidden_layers=2,
                                          num_attention_heads=2, num_key_value_heads=1,
                                          intermediate_size=128, head_dim=32, vocab_size=1000),
                         mm_tokens_per_image=16),
    "swiftformer": dict(embed_dims=[16, 16, 32, 32], depths=[1, 1, 1, 1]),
    "textnet": dict(image_size=[IMAGE_SIZE, IMAGE_SIZE]),
    "timm_wrapper": dict(architecture="resnet18"),
}


def _small_config(model_type: str):
    from transformers import AutoConfig

    overrides = dict(VISION_SMALL.get(model_type, {}))
    subs = {k: overrides.pop(k) for k in [k for k in overrides if k.endswith("_config")]}
    config = AutoConfig.for_model(model_type, **overrides)
    for name, values in subs.items():  # nested configs (vision tower of CLIP-like models)
        sub = getattr(config, name)
        for k, v in values.items():
            setattr(sub, k, v)
    return config


def _image_side(config) -> int:
    vision = getattr(config, "vision_config", None) or config
    side = getattr(vision, "image_size", IMAGE_SIZE)
    side = side[0] if isinstance(side, (list, tuple)) else side
    return int(side) if isinstance(side, int) and 0 < side <= 256 else IMAGE_SIZE


class PixelLogits(nn.Module):
    """Calls ``model(pixel_values=x)`` (or its own keyword) and returns the logits tensor."""

    def __init__(self, model: nn.Module, keyword: str = "pixel_values") -> None:
        super().__init__()
        self.model, self.keyword = model, keyword

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(**{self.keyword: x})
        # PP-LCNet's classifier returns its logits as last_hidden_state
        return out.logits if "logits" in out else out[0]


class ColorClusterLogits(nn.Module):
    """ImageGPT reads colour-cluster ids, not pixels: its image processor maps each pixel to the
    nearest of ``n_clusters`` colours. The wrapper does that mapping in the graph (a distance
    matmul and an argmin), so that the model takes a pixel tensor like the others."""

    def __init__(self, model: nn.Module, n_clusters: int) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("clusters", torch.rand(n_clusters, 3) * 2 - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x.flatten(2).transpose(1, 2)  # (batch, pixels, 3)
        dist = (pixels * pixels).sum(-1, keepdim=True) - 2 * pixels @ self.clusters.T + \
            (self.clusters * self.clusters).sum(-1)
        return self.model(input_ids=dist.argmin(-1)).logits


class PromptedImageLogits(nn.Module):
    """ShieldGemma 2 classifies an image under a fixed text prompt: the prompt's token ids (its
    image placeholder tokens included) are a constant of the graph; the pixels are the input."""

    def __init__(self, model: nn.Module, input_ids: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("input_ids", input_ids)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=self.input_ids, pixel_values=x).logits


class PatchLogits(nn.Module):
    """SigLIP 2 reads an image as a sequence of flattened patches with their grid size (its
    image processor patchifies); the wrapper patchifies in the graph (a reshape and a permute)."""

    def __init__(self, model: nn.Module, patch: int, side: int) -> None:
        super().__init__()
        self.model, self.patch = model, patch
        grid = side // patch
        self.register_buffer("spatial_shapes", torch.tensor([[grid, grid]]))
        self.register_buffer("mask", torch.ones(1, grid * grid, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.patch
        patches = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        patches = patches.reshape(b, (h // p) * (w // p), p * p * c)
        return self.model(pixel_values=patches, pixel_attention_mask=self.mask,
                          spatial_shapes=self.spatial_shapes).logits


def _wrap(model_type: str, model: nn.Module, config) -> tuple[nn.Module, tuple[int, ...]]:
    if model_type == "imagegpt":
        side = int(round((config.n_positions) ** 0.5))
        return ColorClusterLogits(model, config.vocab_size - 1), (1, 3, side, side)
    if model_type == "perceiver":
        return PixelLogits(model, "inputs"), (1, 3, _image_side(config), _image_side(config))
    if model_type == "siglip2":
        patch = config.vision_config.patch_size
        return PatchLogits(model, patch, IMAGE_SIZE), (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    if model_type == "shieldgemma2":
        tokens = [config.boi_token_index] + [config.image_token_index] * \
            config.mm_tokens_per_image + [config.eoi_token_index, 2, 3]
        return PromptedImageLogits(model, torch.tensor([tokens])), (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    side = _image_side(config)
    return PixelLogits(model), (1, 3, side, side)


def _builder(model_type: str, class_name: str) -> Callable[[], tuple[nn.Module, tuple[int, ...]]]:
    def build() -> tuple[nn.Module, tuple[int, ...]]:
        import transformers

        config = _small_config(model_type)
        # seeded by the class name, in a forked RNG: a build neither depends on nor moves the
        # caller's random stream
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(zlib.crc32(class_name.encode()))
            model = getattr(transformers, class_name)(config)
            module, shape = _wrap(model_type, model, config)
        return module.eval(), shape
    return build


def vision_entries() -> list[ZooEntry]:
    """Every class of ``MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES``, in mapping order."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES as mapping)

    out = []
    for model_type, names in mapping.items():
        for name in (names if isinstance(names, (tuple, list)) else (names,)):
            out.append(ZooEntry(name, model_type, "vision", _builder(model_type, name)))
    return out
