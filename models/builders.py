"""Build ``ArrCocLlava`` and its processor from a YAML config: the only place model configs meet constructors.

A model config (``ModelCfg``) has four parts, each a small dataclass with one comment per field: ``vision`` (the
tower), ``llm`` (the LLaVA language side: a checkpoint to load, or a text config for random init), ``query`` (where
the question embedding comes from) and ``arr_coc`` (the fields of :class:`arr_coc.ArrCocCfg`; ``dim`` and
``query_dim`` are filled in from the towers). Freezing is explicit: ``vision_trainable``, ``llm_trainable``,
``arr_coc_trainable`` (plus ``projector_trainable`` and ``query_trainable``).

Presets are the YAML files in ``configs/models/``, addressed by name:

- ``tiny``: 64 px open_clip ViT, 2-layer Llama with a byte tokenizer; K=16 patches, 32 tokens. Tests, CPU, seconds.
- ``bench``: 448 px open_clip ViT-S/16-like tower trained from scratch with a 4-layer Llama; K=49 patches of 4x4
  tokens, 196 of 784 tokens kept. Sized for about 10 minutes on one H100 on the generated benchmark.
- ``llava15_7b``: ``llava-hf/llava-1.5-7b-hf`` with its own CLIP ViT-L/14-336 tower, 36 patches of 4x4 tokens and
  the LLaVA-sized 576-token budget. Needs the weights (no hub access here; never built in tests).

Unknown keys anywhere (files or ``key=value`` overrides) raise ``ValueError`` naming the key and the known ones.
"""

from __future__ import annotations

import dataclasses
import typing
import warnings
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from arr_coc import build_arr_coc, cfg_from_dict
from arr_coc._utils import default_patch_grid
from arr_coc.config import parse_override

__all__ = [
    "CONFIG_DIR", "LlmCfg", "ModelCfg", "QueryCfg", "VisionCfg", "apply_overrides", "architecture_only", "build_for_checkpoint",
    "build_model", "check_choice",
    "dataclass_from_dict", "dataclass_to_dict", "deep_merge", "list_model_presets", "load_model_cfg", "load_yaml",
    "model_dict", "set_by_path",
]

#: The repository's ``configs/`` folder (presets live in ``configs/models``).
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@dataclass
class VisionCfg:
    """The vision tower."""

    backend: str = "open_clip"  # open_clip | hf_clip | hf_siglip | llava (the LLaVA checkpoint's own HF tower)
    model_name: str | None = "arr-coc-tiny-vit"  # open_clip model name, or HF id/dir (hf_* with pretrained: true)
    pretrained: Any = None  # open_clip tag or checkpoint file; for hf_*: true loads model_name with from_pretrained
    hf_config: dict = field(default_factory=dict)  # HF vision config kwargs for random init (hf_clip / hf_siglip)
    image_size: int | None = None  # force the tower's input resolution (open_clip); None: the model's own
    feature_layer: int = -2  # block whose output feeds ARR-COC (negative counts from the end; LLaVA uses -2)
    fine_grid: list | None = None  # (h, w) fine tokens per patch; None: token grid / patch grid (must divide)
    prune: bool = True  # drop blocks after feature_layer and the pooling head


@dataclass
class LlmCfg:
    """The LLaVA language side (projector, LLM, LM head)."""

    name_or_path: str | None = None  # LLaVA checkpoint for from_pretrained; None: random init from text_config
    text_config: dict = field(default_factory=dict)  # HF text config for random init, with model_type (e.g. llama)
    tokenizer: str | None = "byte"  # byte (built in, no download) | HF tokenizer id/dir | None: the checkpoint's
    attn_implementation: str = "sdpa"  # sdpa | eager | flash_attention_2
    dtype: str = "float32"  # weights dtype (float32 | bfloat16 | float16)
    projector_hidden_act: str = "gelu"  # LLaVA projector activation (random init only)


@dataclass
class QueryCfg:
    """Where the question embedding for ARR-COC's participatory score comes from."""

    source: str = "llm"  # llm (mean of the LLM's input embeddings) | open_clip (its text tower)
    model_name: str | None = None  # open_clip model for source=open_clip; None: the vision tower's
    pretrained: str | None = None  # open_clip tag or file for that text tower
    normalize: bool = False  # L2-normalise the open_clip text embedding


@dataclass
class ModelCfg:
    """Everything ``build_model`` needs."""

    vision: VisionCfg = field(default_factory=VisionCfg)
    llm: LlmCfg = field(default_factory=LlmCfg)
    query: QueryCfg = field(default_factory=QueryCfg)
    arr_coc: dict = field(default_factory=dict)  # ArrCocCfg fields; dim / query_dim default to the towers' widths
    pos_embed: bool = True  # learned 2-D position embedding before the projector (see models/position.py)
    pos_grid: list | None = None  # (R, C) of the position table; None: the full fine grid (Gh h, Gw w)
    footprint_embed: bool = False  # learned embedding of each token's footprint (cells per token; models/position.py)
    footprint_log2_range: list = field(default_factory=lambda: [-4, 8])  # log2 footprints of its end nodes
    use_pixel_entropy: bool = False  # ArrCoc's propositional score from pixel grey-level entropy
    image_token: str = "<image>"  # image placeholder in prompts
    image_resize: str = "squash"  # squash | pad (to the tower's aspect with the mean colour; LLaVA-1.5) | crop (centre)
    prompt_template: str = "USER: <image>\n{question} ASSISTANT:"  # LLaVA-1.5 conversation format
    answer_template: str = " {answer}"  # target text; EOS is appended
    vision_trainable: bool = False  # train the vision tower
    llm_trainable: bool = True  # train the LLM (embeddings, decoder layers, LM head)
    arr_coc_trainable: bool = True  # train ArrCoc (knowing, balancing, learned allocators)
    projector_trainable: bool = True  # train the multi-modal projector and the position table
    query_trainable: bool = False  # train the open_clip text tower (source=open_clip)


# -- generic dataclass <-> dict with strict keys ----------------------------------------------------------------------
def dataclass_from_dict(cls: type, data: Mapping[str, Any] | None, *, where: str = "") -> Any:
    """Build a (nested) config dataclass from a dict, rejecting unknown keys with their dotted path.

    Raises:
        ValueError: on an unknown key (the known ones are listed) or a non-mapping where a section is expected.
    """
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ValueError(f"config section {where or '<root>'!r} must be a mapping, got {type(data).__name__}: {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        path = [f"{where}.{k}" if where else k for k in unknown]
        raise ValueError(f"unknown config key(s) {path}; known keys{' of ' + where if where else ''}: {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        sub = f"{where}.{name}" if where else name
        if is_dataclass(tp):
            kwargs[name] = dataclass_from_dict(tp, value, where=sub)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def dataclass_to_dict(obj: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (YAML/JSON-ready)."""
    return dataclasses.asdict(obj)


def set_by_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """``data[a][b][c] = value`` for ``dotted = "a.b.c"``, creating intermediate dicts."""
    parts = dotted.split(".")
    if not all(parts):
        raise ValueError(f"override key {dotted!r} has an empty component")
    cur = data
    for p in parts[:-1]:
        nxt = cur.get(p)
        if nxt is None:
            nxt = cur[p] = {}
        elif not isinstance(nxt, dict):
            raise ValueError(f"override key {dotted!r}: {p!r} is a value ({nxt!r}), not a section")
        cur = nxt
    cur[parts[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings to a raw config dict (values parsed as YAML-ish scalars or JSON).

    Keys are checked when the dict is turned into dataclasses, so an unknown key fails there with its full path.
    """
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        set_by_path(out, *parse_override(item))
    return out


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` merged in: a mapping merges into a mapping key by key, any other value replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping (empty file → ``{}``)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"config file {str(p)!r} does not exist")
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(p)!r} must hold a mapping, got {type(data).__name__}")
    return data


def list_model_presets() -> list[str]:
    """Names of the model presets (``configs/models/*.yaml``)."""
    return sorted(p.stem for p in (CONFIG_DIR / "models").glob("*.yaml"))


def _model_yaml(name_or_path: str) -> dict[str, Any]:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        return load_yaml(p)
    preset = CONFIG_DIR / "models" / f"{name_or_path}.yaml"
    if not preset.is_file():
        raise ValueError(f"unknown model preset {name_or_path!r}; presets: {list_model_presets()} (or a YAML path)")
    return load_yaml(preset)


def load_model_cfg(source: str | Mapping[str, Any] | ModelCfg, overrides: Iterable[str] = ()) -> ModelCfg:
    """A validated :class:`ModelCfg` from a preset name, a YAML path, a dict or a config, plus ``key=value`` overrides.

    Raises:
        ValueError: unknown preset or key (including keys inside ``arr_coc`` and ``llm.text_config``) or bad values.
    """
    if isinstance(source, ModelCfg):
        data = dataclass_to_dict(source)
    elif isinstance(source, Mapping):
        data = dict(source)
    else:
        data = _model_yaml(str(source))
    cfg = dataclass_from_dict(ModelCfg, apply_overrides(data, overrides))
    _validate(cfg)
    return cfg


def architecture_only(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A model config dict without the open_clip vision tower's ``pretrained`` weights (tag or file).

    For rebuilding a model whose checkpoint loads every weight next (evaluation, export, ``load_pretrained``): the
    build then neither reads those weights nor needs their file, which a checkpoint trained on another machine (say,
    from ``scripts/pretrain_vision.py`` output under ``/tmp``) would not find. An open_clip query tower that shares the
    vision tower's weights is treated the same way, so it still shares the model. HF towers keep their setting (their
    ``pretrained`` also fixes the architecture).
    """
    out = dict(cfg)
    vision, query = dict(out.get("vision") or {}), dict(out.get("query") or {})
    if vision.get("backend", "open_clip") == "open_clip" and vision.get("pretrained") is not None:
        if query.get("pretrained") == vision["pretrained"]:
            query["pretrained"] = None
        vision["pretrained"] = None
    out["vision"], out["query"] = vision, query
    return out


def build_for_checkpoint(cfg: Mapping[str, Any]):
    """:func:`build_model` for a checkpoint's config whose weights the caller loads next: built without the towers'
    open_clip weights (:func:`architecture_only`) and without open_clip's "initialized randomly" notice."""
    from models.vision import weights_follow

    with weights_follow():
        return build_model(architecture_only(cfg))


def model_dict(preset: str | Mapping[str, Any] | ModelCfg, overrides: Mapping[str, Any] | None = None,
               ) -> dict[str, Any]:
    """A preset (name, YAML path, dict or config) as a plain dict, with a nested dict of ``ModelCfg`` fields merged
    over it (the ``model_preset`` + ``model`` pair of training and evaluation configs). Not validated after the merge:
    pass the result to :func:`load_model_cfg` or :func:`build_model`."""
    return deep_merge(dataclass_to_dict(load_model_cfg(preset)), overrides or {})


_VISION_BACKENDS = ("open_clip", "hf_clip", "hf_siglip", "llava")
_QUERY_SOURCES = ("llm", "open_clip")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    """``ValueError`` naming the config key, its value and the choices unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name}={value!r}; choose from {list(choices)}")


def _validate(cfg: ModelCfg) -> None:
    """Checks that need no model: enum values, ArrCoc keys, HF text-config keys."""
    check_choice("vision.backend", cfg.vision.backend, _VISION_BACKENDS)
    check_choice("query.source", cfg.query.source, _QUERY_SOURCES)
    check_choice("llm.dtype", cfg.llm.dtype, sorted(_DTYPES))
    if cfg.vision.backend == "llava" and not cfg.llm.name_or_path:
        raise ValueError("vision.backend='llava' uses the LLaVA checkpoint's tower, so llm.name_or_path must be set")
    if cfg.query.source == "open_clip" and cfg.vision.backend != "open_clip" and not cfg.query.model_name:
        raise ValueError("query.source='open_clip' with a non-open_clip vision tower needs query.model_name")
    # dim/query_dim are filled from the towers; any other key must be an ArrCocCfg field.
    cfg_from_dict({k: v for k, v in cfg.arr_coc.items()})
    if not cfg.llm.name_or_path:
        _text_config(cfg.llm.text_config)


def _text_config(kwargs: Mapping[str, Any]):
    """An HF text config from kwargs with ``model_type``; keys the config class does not know are rejected."""
    from transformers import AutoConfig

    kw = dict(kwargs)
    model_type = kw.pop("model_type", None)
    if not model_type:
        raise ValueError(f"llm.text_config needs a model_type (e.g. 'llama') for random init, got {dict(kwargs)}")
    default = AutoConfig.for_model(model_type)
    unknown = sorted(k for k in kw if not hasattr(default, k))
    if unknown:
        raise ValueError(f"unknown llm.text_config key(s) {unknown} for model_type={model_type!r}")
    return AutoConfig.for_model(model_type, **kw)


# -- building ---------------------------------------------------------------------------------------------------------
def build_model(source: str | Mapping[str, Any] | ModelCfg = "tiny", overrides: Iterable[str] = ()):
    """Build ``(ArrCocLlava, ArrCocProcessor)`` from a preset name, YAML path, dict or :class:`ModelCfg`.

    Real weights: ``llm.name_or_path`` loads a LLaVA checkpoint with ``from_pretrained`` (hub id or local dir);
    ``vision.pretrained`` loads open_clip weights (tag or file); ``vision.backend: llava`` reuses the checkpoint's own
    vision tower. The freezing flags of the config are applied.

    Returns:
        The model (on CPU, in ``llm.dtype``) and its processor.
    """
    from models.processing import ArrCocProcessor, build_byte_tokenizer
    from models.position import FootprintEmbedding, PositionEmbedding2d
    from models.text import OpenClipText
    from models.vision import HFVision, OpenClipVision, create_open_clip, default_pos_grid, hf_vision_from_config
    from models.vlm import ArrCocLlava

    cfg = load_model_cfg(source, overrides)
    vc, lc, qc = cfg.vision, cfg.llm, cfg.query
    acfg = cfg_from_dict(dict(cfg.arr_coc))
    patch_grid = tuple(acfg.patch_grid) if acfg.patch_grid else default_patch_grid(acfg.num_patches)
    vkw = {"patch_grid": patch_grid, "fine_grid": vc.fine_grid, "feature_layer": vc.feature_layer, "prune": vc.prune}

    # Tokenizer first: a randomly initialised LLaVA needs the image token id and the vocabulary size.
    if lc.tokenizer == "byte":
        tokenizer = build_byte_tokenizer(cfg.image_token)
    else:
        from transformers import AutoTokenizer

        tok_src = lc.tokenizer or lc.name_or_path
        if not tok_src:
            raise ValueError("llm.tokenizer is None but there is no llm.name_or_path to take a tokenizer from")
        tokenizer = AutoTokenizer.from_pretrained(tok_src)
    if cfg.image_token not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [cfg.image_token]})
    if tokenizer.pad_token is None:
        # The processor would make the same choice later; made here, the LLM's config below gets the id prompts are
        # padded with (generate fills finished rows with it and infers the padding mask from it).
        tokenizer.pad_token = tokenizer.eos_token
    image_token_id = int(tokenizer.convert_tokens_to_ids(cfg.image_token))

    # Vision (and an open_clip text tower sharing the same model).
    clip, text_encoder = None, None
    if vc.backend == "open_clip":
        clip = create_open_clip(vc.model_name, pretrained=vc.pretrained, image_size=vc.image_size)
        vision = OpenClipVision(clip.visual, **vkw)
    elif vc.backend in ("hf_clip", "hf_siglip"):
        vision = hf_vision_from_config(vc.backend[3:], vc.hf_config,
                                       name_or_path=vc.model_name if vc.pretrained else None, **vkw)
    else:
        vision = None  # taken from the LLaVA checkpoint below
    if qc.source == "open_clip":
        import open_clip

        q_name = qc.model_name or vc.model_name
        same = clip is not None and q_name == vc.model_name and qc.pretrained in (None, vc.pretrained)
        q_clip = clip if same else create_open_clip(q_name, pretrained=qc.pretrained)
        text_encoder = OpenClipText(q_clip, open_clip.get_tokenizer(q_name), normalize=qc.normalize)

    llava = _build_llava(lc, vision.feature_dim if vision is not None else None, image_token_id, tokenizer)
    if vision is None:
        # num_prefix_tokens=None: a CLIP tower's class token is dropped, a SigLIP tower (no class token) keeps every
        # token (1 fixed here dropped a SigLIP checkpoint's first patch and broke its grid).
        vision = HFVision(llava.model.vision_tower, num_prefix_tokens=None, **vkw)
        _warn_other_feature_choice(llava.config, vc.feature_layer, vision.num_prefix_tokens, lc.name_or_path)
        llava.model.vision_tower = None

    query_dim = text_encoder.output_dim if text_encoder is not None else llava.config.text_config.hidden_size
    acfg = dataclasses.replace(acfg, dim=cfg.arr_coc.get("dim", vision.feature_dim),
                               query_dim=cfg.arr_coc.get("query_dim", query_dim), patch_grid=list(patch_grid))
    if acfg.dim != vision.feature_dim or acfg.query_dim != query_dim:
        raise ValueError(f"arr_coc.dim={acfg.dim} / query_dim={acfg.query_dim} disagree with the towers' widths "
                         f"{vision.feature_dim} / {query_dim}; leave them out to use the towers'")
    arr_coc = build_arr_coc(acfg)
    pos = PositionEmbedding2d(vision.feature_dim, cfg.pos_grid or default_pos_grid(vision)) if cfg.pos_embed else None
    footprint = (FootprintEmbedding(vision.feature_dim, cfg.footprint_log2_range) if cfg.footprint_embed
                 else None)
    model = ArrCocLlava(llava, vision, arr_coc, query_encoder=text_encoder, pos_embed=pos, footprint_embed=footprint,
                        use_pixel_entropy=cfg.use_pixel_entropy)
    for name, child in model.named_children():
        if name != "arr_coc":
            child.to(_DTYPES[lc.dtype])
    # ArrCoc computes in float32 (see ArrCocLlava.visual_tokens); its allocator keeps its own precision (a bandit's
    # statistics may be float64).
    for name, child in model.arr_coc.named_children():
        if name != "attending":
            child.float()
    model.set_trainable(vision=cfg.vision_trainable, llm=cfg.llm_trainable, arr_coc=cfg.arr_coc_trainable,
                        projector=cfg.projector_trainable, query=cfg.query_trainable)
    processor = ArrCocProcessor(tokenizer, budget=arr_coc.budget, image_size=vision.image_size,
                                image_mean=vision.image_mean, image_std=vision.image_std, image_token=cfg.image_token,
                                image_resize=cfg.image_resize,
                                prompt_template=cfg.prompt_template, answer_template=cfg.answer_template,
                                query_tokenizer=text_encoder.tokenize if text_encoder is not None else None)
    return model, processor


def _warn_other_feature_choice(config: Any, feature_layer: int, prefix_tokens: int, where: str) -> None:
    """``vision.backend: llava`` feeds ARR-COC ``hidden_states[vision.feature_layer]`` less the class token (a CLIP
    tower's; SigLIP has none), whatever the checkpoint's own ``vision_feature_layer`` and
    ``vision_feature_select_strategy`` say (LLaVA-1.5: -2 and "default", the same). A projector trained on other
    features would be fed these silently: warn, naming both, where the layer differs or a CLIP checkpoint keeps its
    class token ("full")."""
    n = int(config.vision_config.num_hidden_layers) + 1  # hidden_states: the embeddings, then each block

    def index(layer: Any) -> Any:
        return layer + n if isinstance(layer, int) and layer < 0 else layer

    layer = getattr(config, "vision_feature_layer", feature_layer)
    strategy = getattr(config, "vision_feature_select_strategy", "default")
    if index(layer) != index(feature_layer) or (strategy == "full" and prefix_tokens > 0):
        warnings.warn(f"llm.name_or_path={where!r}: the checkpoint's projector was trained on vision_feature_layer="
                      f"{layer!r}, vision_feature_select_strategy={strategy!r}; ARR-COC is fed vision.feature_layer="
                      f"{feature_layer} without {prefix_tokens} leading class token(s); set vision.feature_layer to "
                      "match if that is not intended", stacklevel=3)


def _build_llava(lc: LlmCfg, vision_dim: int | None, image_token_id: int, tokenizer: Any):
    """A ``LlavaForConditionalGeneration``: loaded (``name_or_path``) or randomly initialised from ``text_config``."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    dtype = _DTYPES[lc.dtype]
    if lc.name_or_path:
        llava, info = LlavaForConditionalGeneration.from_pretrained(
            lc.name_or_path, dtype=dtype, attn_implementation=lc.attn_implementation, output_loading_info=True)
        # from_pretrained initialises weights missing from the checkpoint at random and only logs it: a frozen LLM
        # with a random layer would then train and evaluate as if it were the checkpoint.
        missing, unexpected = sorted(info["missing_keys"]), sorted(info["unexpected_keys"])
        if missing or unexpected:
            raise ValueError(f"llm.name_or_path={lc.name_or_path!r}: its weights do not fit "
                             f"LlavaForConditionalGeneration: {len(missing)} missing {missing[:8]}, "
                             f"{len(unexpected)} unexpected {unexpected[:8]} (is it a llava-hf LLaVA checkpoint?)")
        if len(tokenizer) > llava.get_input_embeddings().num_embeddings:
            llava.resize_token_embeddings(len(tokenizer))
        llava.config.image_token_id = image_token_id
        # LLaVA-1.5's checkpoints keep pad_token_id (32001) on the top-level config only; ArrCocLlava.generate reads
        # the text config's, so the processor's pad id goes there when the checkpoint has none (else generate padded
        # with 0 and could not tell padding in input_ids without a mask). A checkpoint's own id that is not the
        # tokenizer's (llm.tokenizer naming another tokenizer, or a config default of 0) is replaced too, with a
        # warning: generate would fill finished rows with a token that, in this tokenizer, decodes as text.
        pad, have = tokenizer.pad_token_id, getattr(llava.config.text_config, "pad_token_id", None)
        if pad is not None and have != pad:
            if have is not None:
                warnings.warn(f"llm.name_or_path={lc.name_or_path!r}: text_config.pad_token_id={have} is not the "
                              f"pad id of the tokenizer ({lc.tokenizer or lc.name_or_path!r}: {pad}, "
                              f"{tokenizer.pad_token!r}); using {pad}, the id the processor pads prompts with",
                              stacklevel=3)
            llava.config.text_config.pad_token_id = int(pad)
        proj_in = llava.model.multi_modal_projector.linear_1.in_features
        if vision_dim is not None and vision_dim != proj_in:
            raise ValueError(f"the vision tower's width {vision_dim} does not fit the checkpoint's projector input "
                             f"{proj_in}")
        return llava
    text = _text_config(lc.text_config)
    if text.vocab_size < len(tokenizer):
        raise ValueError(f"llm.text_config.vocab_size={text.vocab_size} is smaller than the tokenizer "
                         f"({len(tokenizer)} tokens)")
    text.pad_token_id = tokenizer.pad_token_id
    text.bos_token_id, text.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    # LLaVA sizes its projector from vision_config.hidden_size; the tower itself is replaced by ours, so a
    # zero-layer stand-in keeps construction cheap.
    stand_in = CLIPVisionConfig(hidden_size=vision_dim, intermediate_size=4, num_hidden_layers=0,
                                num_attention_heads=1, image_size=8, patch_size=8)
    config = LlavaConfig(vision_config=stand_in.to_dict(), text_config=text.to_dict(), image_token_id=image_token_id,
                         projector_hidden_act=lc.projector_hidden_act)
    config.pad_token_id = tokenizer.pad_token_id
    return LlavaForConditionalGeneration._from_config(config, attn_implementation=lc.attn_implementation, dtype=dtype)
