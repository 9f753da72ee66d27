"""Vision towers that hand ARR-COC the fine patch-feature grid ``(B, K, h, w, D)``.

ARR-COC needs, for each of ``K = Gh x Gw`` patches, the ``h x w`` grid of fine features at full detail. A ViT already
produces a ``Hg x Wg`` token grid; we cut it into a ``Gh x Gw`` layout of ``h x w`` token blocks. When the token grid
does not divide into the layout (e.g. the K=200 preset's 10x20 patches on a 24x24 CLIP grid), the grid is resampled
to ``(Gh h) x (Gw w)`` first (bilinear, antialiased when shrinking), so any layout works with any tower.

Two backends:

- :class:`OpenClipVision` wraps an open_clip visual tower (Radford et al. 2021, CLIP; Cherti et al. 2023, OpenCLIP),
  built by ``open_clip.create_model(name, pretrained=...)``. Features come from ``forward_intermediates`` at a chosen
  block (LLaVA uses the penultimate block, Liu et al. 2023), and the blocks after it are pruned.
- :class:`HFVision` wraps a ``transformers`` CLIP or SigLIP vision model (Zhai et al. 2023), e.g. the vision tower
  of a LLaVA checkpoint, reading ``hidden_states[feature_layer]`` and dropping the class token when there is one.

Tiny towers for tests are open_clip configs shipped in ``models/open_clip_configs/`` and registered with
``open_clip.add_model_config`` on first use (no download), or HF configs built in code.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arr_coc._utils import _check_int, _grid_pair

__all__ = [
    "weights_follow",
    "HFVision", "OPEN_CLIP_CONFIG_DIR", "OpenClipVision", "VisionTower", "create_open_clip", "default_pos_grid",
    "hf_checkpointing", "hf_vision_from_config", "register_open_clip_configs",
]

#: open_clip model configs shipped with the project (``arr-coc-tiny-vit``, ``arr-coc-bench-vit``).
OPEN_CLIP_CONFIG_DIR = Path(__file__).resolve().parent / "open_clip_configs"
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_registered = False


def register_open_clip_configs() -> None:
    """Register the project's open_clip configs (idempotent), so ``open_clip.create_model`` knows their names."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(OPEN_CLIP_CONFIG_DIR)
        _registered = True


def create_open_clip(model_name: str, *, pretrained: str | None = None, image_size: int | None = None,
                     cache_dir: str | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """Build an open_clip model (both towers) by name, optionally with weights.

    Args:
        model_name: A built-in open_clip name (``ViT-L-14-336``), one of ours (``arr-coc-tiny-vit``), or a
            ``hf-hub:`` / ``local-dir:`` reference.
        pretrained: open_clip pretrained tag (``openai``, ``laion2b_s32b_b82k``, ...) or a local checkpoint file.
            Tags download from the hub on first use; this project's machines have no hub access, so pass a file.
        image_size: Override the tower's input resolution (its position embedding is resized when loading).
        cache_dir: Where open_clip caches downloads.
        device: Device to build on.

    Returns:
        The open_clip ``CLIP`` / ``CustomTextCLIP`` model.
    """
    import open_clip

    register_open_clip_configs()
    known = set(open_clip.list_models())
    if not model_name.startswith(("hf-hub:", "local-dir:")) and model_name.replace("/", "-") not in known:
        ours = sorted(p.stem for p in OPEN_CLIP_CONFIG_DIR.glob("*.json"))
        raise ValueError(f"unknown open_clip model {model_name!r}; ours: {ours}, or see open_clip.list_models()")
    return open_clip.create_model(model_name, pretrained=pretrained, force_image_size=image_size, cache_dir=cache_dir,
                                  device=device)


class _DropRandomInitNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def weights_follow() -> Iterator[None]:
    """Silence open_clip's "No pretrained weights loaded ... initialized randomly" warning while building a model whose
    weights are loaded from a checkpoint right after (it is true of the build, and misleading to whoever reads it)."""
    notice, root = _DropRandomInitNotice(), logging.getLogger()
    root.addFilter(notice)
    try:
        yield
    finally:
        root.removeFilter(notice)


def hf_checkpointing(model: nn.Module, enable: bool, checkpointing_kwargs: dict[str, Any] | None = None,
                     **kwargs: Any) -> None:
    """A ``transformers`` model's activation checkpointing on or off: ``activation_checkpointing_enable/disable``
    where transformers has them, else the ``gradient_checkpointing_enable/disable`` they replace (and deprecate).
    ``checkpointing_kwargs`` go to ``torch.utils.checkpoint`` (HF's default: ``use_reentrant=False``)."""
    if not enable:
        (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()
    elif hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpointing_kwargs, **kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing_kwargs, **kwargs)


class VisionTower(nn.Module):
    """Base class: pixels → fine patch grid. Subclasses implement :meth:`token_grid_features`.

    Args:
        feature_dim: Width D of the tower's tokens.
        token_grid: ``(Hg, Wg)`` token grid of the tower at ``image_size``.
        image_size: ``(H, W)`` input resolution.
        patch_grid: ``(Gh, Gw)`` ARR-COC patch layout (K = Gh Gw).
        fine_grid: ``(h, w)`` fine tokens per patch; ``None``: ``(Hg / Gh, Wg / Gw)``, which must divide exactly.
        image_mean: Per-channel normalisation mean the tower was trained with.
        image_std: Per-channel normalisation std.

    Shapes:
        pixels: (B, 3, H, W), normalised with ``image_mean`` / ``image_std``
        returns: (B, K, h, w, D)
    """

    def __init__(self, feature_dim: int, token_grid: Sequence[int], image_size: Sequence[int],
                 patch_grid: Sequence[int], fine_grid: Sequence[int] | None = None,
                 image_mean: Sequence[float] = _OPENAI_MEAN, image_std: Sequence[float] = _OPENAI_STD):
        super().__init__()
        self.feature_dim = int(feature_dim)
        self.token_grid = (int(token_grid[0]), int(token_grid[1]))
        self.image_size = (int(image_size[0]), int(image_size[1]))
        if len(patch_grid) != 2 or min(patch_grid) < 1:
            raise ValueError(f"patch_grid must be two positive ints (Gh, Gw), got {patch_grid}")
        # _grid_pair refuses a float or bool entry (int() truncated 2.5 to 2 and read True as 1), naming it.
        self.patch_grid = _grid_pair(patch_grid, "patch_grid", "(Gh, Gw)")
        gh, gw = self.patch_grid
        hg, wg = self.token_grid
        if fine_grid is None:
            if hg % gh or wg % gw:
                raise ValueError(
                    f"token grid {self.token_grid} does not divide into patch_grid {self.patch_grid}; pass fine_grid "
                    f"(h, w) to resample the grid to (Gh*h, Gw*w)")
            fine_grid = (hg // gh, wg // gw)
        if len(fine_grid) != 2 or min(fine_grid) < 1:
            raise ValueError(f"fine_grid must be two positive ints (h, w), got {fine_grid}")
        self.fine_grid = _grid_pair(fine_grid, "fine_grid", "(h, w)")
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)

    @property
    def num_patches(self) -> int:
        return self.patch_grid[0] * self.patch_grid[1]

    def extra_repr(self) -> str:
        return (f"feature_dim={self.feature_dim}, token_grid={self.token_grid}, patch_grid={self.patch_grid}, "
                f"fine_grid={self.fine_grid}")

    def token_grid_features(self, pixels: Tensor) -> Tensor:
        """The tower's token grid. Shape (B, 3, H, W) → (B, D, Hg, Wg)."""
        raise NotImplementedError

    def fsdp_blocks(self) -> list[nn.Module]:
        """Transformer blocks to shard one by one with FSDP (empty: the tower joins its parent's group)."""
        return []

    def set_grad_checkpointing(self, enable: bool = True, checkpointing_kwargs: dict[str, Any] | None = None) -> None:
        """Recompute the tower's blocks in the backward pass instead of keeping their activations (a no-op here)."""

    def to_patches(self, grid: Tensor) -> Tensor:
        """Cut a token grid into the patch layout, resampling when it does not divide exactly.

        Shapes:
            grid: (B, D, Hg, Wg)
            returns: (B, K, h, w, D)
        """
        b, d = grid.shape[:2]
        (gh, gw), (h, w) = self.patch_grid, self.fine_grid
        size = (gh * h, gw * w)
        if tuple(grid.shape[2:]) != size:
            shrink = size[0] < grid.shape[2] or size[1] < grid.shape[3]
            # In float32: antialiased resampling has no bf16/fp16 CPU kernel, and half precision would blur less.
            grid = F.interpolate(grid.float(), size=size, mode="bilinear", align_corners=False,
                                 antialias=shrink).to(grid.dtype)
        grid = grid.reshape(b, d, gh, h, gw, w)
        return grid.permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, h, w, d)  # (B, K, h, w, D)

    def forward(self, pixels: Tensor) -> Tensor:
        if not isinstance(pixels, Tensor) or pixels.dim() != 4 or pixels.shape[1] != 3:
            shape = tuple(pixels.shape) if isinstance(pixels, Tensor) else type(pixels).__name__
            raise ValueError(f"pixels must have shape (B, 3, H, W), got {shape}")
        if tuple(pixels.shape[2:]) != self.image_size:
            raise ValueError(f"pixels are {tuple(pixels.shape[2:])} but the tower expects {self.image_size}")
        if not pixels.is_floating_point():
            # uint8 pixels (the processor's normalize=False) would run on a 0-255 scale: HF towers cast them silently.
            raise ValueError(f"pixels must be normalised floats, got dtype {pixels.dtype}; normalise uint8 pixels "
                             "with the processor (processor.normalize, or move_to(batch, device, processor))")
        return self.to_patches(self.token_grid_features(pixels))


def _abs_layer(layer: int, num_layers: int) -> int:
    layer = _check_int("feature_layer", layer)  # 1.5 failed later as a slice index, True read as block 1
    idx = layer + num_layers if layer < 0 else layer
    if not 0 <= idx < num_layers:
        raise ValueError(f"feature_layer={layer} out of range for a tower with {num_layers} blocks")
    return idx


class OpenClipVision(VisionTower):
    """An open_clip visual tower (ViT) as an ARR-COC feature source.

    Args:
        visual: ``model.visual`` of an open_clip model (a ``VisionTransformer``).
        patch_grid: ``(Gh, Gw)`` ARR-COC patch layout.
        fine_grid: ``(h, w)`` fine tokens per patch (``None``: token grid / patch grid).
        feature_layer: Block whose output is used (negative counts from the end; LLaVA uses -2).
        prune: Drop the blocks after ``feature_layer`` and the pooling head, which would otherwise be dead weight.
            A tower configured with patch dropout has it switched off (with a warning): the layout needs every token.
        image_mean: Normalisation mean (default: the tower's preprocess config, else OpenAI CLIP's).
        image_std: Normalisation std.

    Shapes:
        pixels: (B, 3, H, W)
        returns: (B, K, h, w, D) with D the tower width
    """

    def __init__(self, visual: nn.Module, *, patch_grid: Sequence[int], fine_grid: Sequence[int] | None = None,
                 feature_layer: int = -2, prune: bool = True, image_mean: Sequence[float] | None = None,
                 image_std: Sequence[float] | None = None):
        if not hasattr(visual, "forward_intermediates") or not hasattr(visual, "transformer"):
            raise ValueError(f"OpenClipVision needs an open_clip VisionTransformer, got {type(visual).__name__}")
        pcfg = getattr(visual, "preprocess_cfg", None) or {}
        super().__init__(visual.transformer.width, visual.grid_size, visual.image_size, patch_grid, fine_grid,
                         image_mean or pcfg.get("mean", _OPENAI_MEAN), image_std or pcfg.get("std", _OPENAI_STD))
        drop = getattr(visual, "patch_dropout", None)
        if getattr(drop, "prob", 0.0) > 0:
            # Patch dropout deletes tokens at random in train mode; forward_intermediates would reshape the survivors
            # into a wrong grid (no error), and the patch layout needs every token. It is the identity in eval mode.
            warnings.warn(f"the open_clip tower's patch_dropout={drop.prob} is switched off: the patch layout needs "
                          "every token", stacklevel=2)
            visual.patch_dropout = nn.Identity()
        n = len(visual.transformer.resblocks)
        self.layer_index = _abs_layer(feature_layer, n)
        if prune:
            visual.prune_intermediate_layers([self.layer_index], prune_norm=True, prune_head=True)
            # open_clip keeps the pooling modules even with prune_head; nothing reads them now, so drop their weights.
            for name in ("attn_pool", "attn_pool_contrastive"):
                if getattr(visual, name, None) is not None:
                    setattr(visual, name, None)
        self.visual = visual

    def fsdp_blocks(self) -> list[nn.Module]:
        return list(self.visual.transformer.resblocks)

    def set_grad_checkpointing(self, enable: bool = True, checkpointing_kwargs: dict[str, Any] | None = None) -> None:
        # forward_intermediates checkpoints each block when set (non-reentrant; open_clip takes no arguments)
        self.visual.set_grad_checkpointing(enable)

    def token_grid_features(self, pixels: Tensor) -> Tensor:
        # A tower built or loaded in bf16/fp16 takes its own dtype (the processor gives float32), as HF towers do.
        pixels = pixels.to(self.visual.conv1.weight.dtype)
        out = self.visual.forward_intermediates(pixels, indices=[self.layer_index], stop_early=True,
                                                intermediates_only=True, output_fmt="NCHW")
        return out["image_intermediates"][0]  # (B, D, Hg, Wg)


class HFVision(VisionTower):
    """A ``transformers`` CLIP / SigLIP vision model as an ARR-COC feature source.

    Args:
        model: ``CLIPVisionModel`` or ``SiglipVisionModel`` (anything returning ``hidden_states`` with a
            ``config`` holding ``image_size``, ``patch_size`` and ``hidden_size``).
        patch_grid: ``(Gh, Gw)`` ARR-COC patch layout.
        fine_grid: ``(h, w)`` fine tokens per patch (``None``: token grid / patch grid).
        feature_layer: Index into ``hidden_states`` (0 is the embeddings; -2 the penultimate block, as in LLaVA).
        num_prefix_tokens: Leading non-spatial tokens to drop; ``None``: 1 for CLIP (class token), 0 for SigLIP.
        prune: Drop encoder blocks after ``feature_layer``.
        image_mean: Normalisation mean (default: CLIP's, or 0.5 for SigLIP).
        image_std: Normalisation std.

    Shapes:
        pixels: (B, 3, H, W)
        returns: (B, K, h, w, D)
    """

    def __init__(self, model: nn.Module, *, patch_grid: Sequence[int], fine_grid: Sequence[int] | None = None,
                 feature_layer: int = -2, num_prefix_tokens: int | None = None, prune: bool = True,
                 image_mean: Sequence[float] | None = None, image_std: Sequence[float] | None = None):
        cfg = model.config
        siglip = "siglip" in str(getattr(cfg, "model_type", "")).lower()
        side = cfg.image_size // cfg.patch_size
        default_mean, default_std = ((0.5,) * 3, (0.5,) * 3) if siglip else (_OPENAI_MEAN, _OPENAI_STD)
        super().__init__(cfg.hidden_size, (side, side), (cfg.image_size, cfg.image_size), patch_grid, fine_grid,
                         image_mean or default_mean, image_std or default_std)
        self.num_prefix_tokens = (0 if siglip else 1) if num_prefix_tokens is None else int(num_prefix_tokens)
        n = cfg.num_hidden_layers
        feature_layer = _check_int("feature_layer", feature_layer)  # 1.5 failed later as a slice index, True read as 1
        # hidden_states has n + 1 entries (embeddings, then each block); feature_layer indexes that list.
        self.hidden_index = feature_layer + n + 1 if feature_layer < 0 else feature_layer
        if not 0 <= self.hidden_index <= n:
            raise ValueError(f"feature_layer={feature_layer} out of range for hidden_states of length {n + 1}")
        layers = self._layers(model)
        if prune and layers is not None and self.hidden_index < n:
            # Keep at least one block: with none, HF returns no hidden_states at all (not even the embeddings).
            del layers[max(self.hidden_index, 1):]
        self.model = model

    @staticmethod
    def _layers(model: nn.Module) -> nn.ModuleList | None:
        inner = getattr(model, "vision_model", model)
        enc = getattr(inner, "encoder", None)
        return getattr(enc, "layers", None)

    def fsdp_blocks(self) -> list[nn.Module]:
        layers = self._layers(self.model)
        return list(layers) if layers is not None else []

    def set_grad_checkpointing(self, enable: bool = True, checkpointing_kwargs: dict[str, Any] | None = None) -> None:
        hf_checkpointing(self.model, enable, checkpointing_kwargs)

    def token_grid_features(self, pixels: Tensor) -> Tensor:
        # With the blocks after it pruned, the wanted hidden state is the last one, still at hidden_index.
        hidden = self.model(pixel_values=pixels, output_hidden_states=True).hidden_states[self.hidden_index]
        tokens = hidden[:, self.num_prefix_tokens:]  # (B, Hg*Wg, D)
        hg, wg = self.token_grid
        if tokens.shape[1] != hg * wg:
            raise ValueError(f"vision model returned {tokens.shape[1]} spatial tokens, expected {hg}x{wg}={hg * wg}")
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, hg, wg)  # (B, D, Hg, Wg)


def hf_vision_from_config(kind: str, config: dict[str, Any] | None = None, *, name_or_path: str | None = None,
                          **kwargs: Any) -> HFVision:
    """Build an :class:`HFVision` from a random config (tests) or ``from_pretrained`` (users with weights).

    Args:
        kind: ``"clip"`` or ``"siglip"``.
        config: Config kwargs for random init (ignored when ``name_or_path`` is given).
        name_or_path: HF hub id or local directory of a CLIP/SigLIP vision checkpoint.
        **kwargs: Passed to :class:`HFVision` (``patch_grid``, ``fine_grid``, ``feature_layer``, ...).
    """
    import transformers

    classes = {"clip": ("CLIPVisionConfig", "CLIPVisionModel"), "siglip": ("SiglipVisionConfig", "SiglipVisionModel")}
    if kind not in classes:
        raise ValueError(f"unknown HF vision kind {kind!r}; known: {sorted(classes)}")
    cfg_cls, model_cls = (getattr(transformers, n) for n in classes[kind])
    if name_or_path:
        model, info = model_cls.from_pretrained(name_or_path, output_loading_info=True)
        # Missing weights would be initialised at random with a log line only. Unexpected ones are expected: a full
        # CLIP/SigLIP checkpoint (both towers) holds the text tower's too.
        if info["missing_keys"]:
            missing = sorted(info["missing_keys"])
            raise ValueError(f"vision.model_name={name_or_path!r}: {len(missing)} weights of {model_cls.__name__} "
                             f"are missing from the checkpoint: {missing[:8]} (is it a {kind} checkpoint?)")
    else:
        model = model_cls(cfg_cls(**(config or {})))
    return HFVision(model, **kwargs)


def default_pos_grid(vision: VisionTower) -> tuple[int, int]:
    """Resolution of the learned 2-D position table: the full fine grid ``(Gh h, Gw w)``."""
    (gh, gw), (h, w) = vision.patch_grid, vision.fine_grid
    return gh * h, gw * w
