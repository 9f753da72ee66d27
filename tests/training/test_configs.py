"""Every YAML in configs/ builds; unknown keys and malformed overrides are rejected with clear errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from models.builders import (CONFIG_DIR, QueryCfg, architecture_only, build_for_checkpoint, build_model,
                             dataclass_from_dict, deep_merge, list_model_presets, load_model_cfg, load_yaml, model_dict)
from training.train import load_train_cfg, model_cfg

YAMLS = sorted(CONFIG_DIR.rglob("*.yaml"))


def _header(path: Path) -> str:
    lines = path.read_text().splitlines()
    return "\n".join(line for line in lines[: next(i for i, ln in enumerate(lines) if not ln.startswith("#"))])


def test_configs_exist():
    names = {p.relative_to(CONFIG_DIR).as_posix() for p in YAMLS}
    assert {"accelerate/fsdp_cpu.yaml", "accelerate/fsdp_gpu.yaml", "train/tiny.yaml", "train/bench.yaml",
            "models/tiny.yaml", "models/bench.yaml", "models/llava15_7b.yaml"} <= names
    assert set(list_model_presets()) >= {"tiny", "bench", "llava15_7b"}


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.relative_to(CONFIG_DIR).as_posix())
def test_yaml_is_headed_by_its_command(path):
    head = _header(path)
    assert head.startswith("#"), f"{path} must open with a comment naming its command"
    want = {"models": "build_model", "eval": "python -m eval.run_eval"}.get(path.parent.name, "accelerate launch")
    assert want in head, f"{path} header lacks {want!r}"


@pytest.mark.parametrize("path", sorted((CONFIG_DIR / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_yaml_loads(path):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(path))  # accelerate rejects unknown keys itself
    assert cfg.distributed_type.value == "FSDP" and cfg.fsdp_config["fsdp_version"] == 2


@pytest.mark.parametrize("path", sorted((CONFIG_DIR / "train").glob("*.yaml")), ids=lambda p: p.name)
def test_train_yaml_loads_and_its_model_validates(path):
    cfg = load_train_cfg(path)
    mcfg = model_cfg(cfg)
    assert mcfg.arr_coc["budget"] >= mcfg.arr_coc["num_patches"] * mcfg.arr_coc["min_tokens"]
    assert cfg.train.batch_size >= 1


@pytest.mark.parametrize("name", ["tiny", "bench"])
def test_model_preset_builds(name):
    model, processor = build_model(name)
    cfg = load_model_cfg(name)
    assert model.budget == cfg.arr_coc["budget"] == processor.budget
    assert model.vision.num_patches == cfg.arr_coc["num_patches"]
    x = torch.zeros(1, 3, *processor.image_size)
    with torch.no_grad():
        assert model.vision(x).shape[1] == cfg.arr_coc["num_patches"]


def _tiny_llava_checkpoint(directory: Path, text_pad: int | None = 0, tok_pad: str | None = None) -> None:
    """A LLaVA-1.5-shaped checkpoint (HF CLIP tower with a 24x24 token grid, Llama LM), saved locally; ``tok_pad``
    adds that token to the tokenizer as its pad token."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from models.processing import build_byte_tokenizer

    tok = build_byte_tokenizer()
    if tok_pad is not None:
        tok.add_special_tokens({"pad_token": tok_pad})
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
                              image_size=48, patch_size=2)
    text = LlamaConfig(vocab_size=264, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                       tie_word_embeddings=False, pad_token_id=text_pad)
    cfg = LlavaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                      image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-2)
    torch.manual_seed(0)
    LlavaForConditionalGeneration(cfg).save_pretrained(directory)
    tok.save_pretrained(directory)


def test_checkpoint_without_a_text_pad_id_gets_the_tokenizers(tmp_path):
    """llava-hf's LLaVA-1.5 config holds pad_token_id only at the top level: generate then padded with 0 and inferred
    no padding mask; the processor's pad id now fills the text config's."""
    from PIL import Image

    _tiny_llava_checkpoint(tmp_path, text_pad=None, tok_pad="<pad1>")  # pad id 260, as LLaVA-1.5's is 32001
    model, processor = build_model("llava15_7b", [f"llm.name_or_path={tmp_path}", "llm.dtype=float32"])
    pad = processor.tokenizer.pad_token_id
    assert pad not in (None, 0) and model.config.text_config.pad_token_id == pad
    batch = processor([Image.new("RGB", (48, 48), c) for c in ("red", "blue")], ["a?", "what colour is it?"])
    assert not bool(batch["attention_mask"][0].all())
    kw = {"max_new_tokens": 2, "output_scores": True, "return_dict_in_generate": True}
    masked = model.generate(**batch, **kw)
    inferred = model.generate(**{**batch, "attention_mask": None}, **kw)
    torch.testing.assert_close(inferred.scores[0], masked.scores[0])


def test_checkpoint_pad_id_that_is_not_the_tokenizers_is_replaced_with_a_warning(tmp_path):
    """A checkpoint's own text pad id (here a config default of 0) that differs from the tokenizer's made generate
    fill finished rows with a token that decodes as text, and infer no padding mask from the processor's padding.
    The tokenizer's id now wins, with a warning naming both."""
    from PIL import Image

    _tiny_llava_checkpoint(tmp_path, text_pad=0, tok_pad="<pad1>")
    with pytest.warns(UserWarning, match=r"text_config.pad_token_id=0 is not the pad id of the tokenizer .*: 260"):
        model, processor = build_model("llava15_7b", [f"llm.name_or_path={tmp_path}", "llm.dtype=float32"])
    assert processor.tokenizer.pad_token_id == model.config.text_config.pad_token_id == 260
    batch = processor([Image.new("RGB", (48, 48), c) for c in ("red", "blue")], ["a?", "what colour is it?"])
    kw = {"max_new_tokens": 2, "output_scores": True, "return_dict_in_generate": True}
    masked = model.generate(**batch, **kw)
    inferred = model.generate(**{**batch, "attention_mask": None}, **kw)
    torch.testing.assert_close(inferred.scores[0], masked.scores[0])


def test_tokenizer_without_a_pad_token_pads_with_eos_in_the_llms_config_too(tmp_path):
    """No pad token: the processor pads with EOS; the LLM's config (what generate fills finished rows with) used to
    stay without one, and generate then filled them with token 0."""
    from transformers import AutoTokenizer

    _tiny_llava_checkpoint(tmp_path, text_pad=None)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).pad_token is None
    model, processor = build_model("llava15_7b", [f"llm.name_or_path={tmp_path}", "llm.dtype=float32"])
    eos = processor.tokenizer.eos_token_id
    assert eos not in (None, 0) and processor.tokenizer.pad_token_id == model.config.text_config.pad_token_id == eos


def test_llava15_7b_preset_builds_from_a_local_checkpoint(tmp_path):
    """The preset's structure (HF tower from the checkpoint, 6x6 patches of 4x4, 576 tokens, frozen LLM), loaded
    with from_pretrained from a tiny local checkpoint of the same shape (no hub access here)."""
    from PIL import Image

    _tiny_llava_checkpoint(tmp_path)
    model, processor = build_model("llava15_7b", [f"llm.name_or_path={tmp_path}", "llm.dtype=float32"])
    assert model.llava.model.vision_tower is None and type(model.vision).__name__ == "HFVision"
    assert model.vision.fine_grid == (4, 4) and model.budget == 576
    groups = model.parameter_groups()
    assert not any(p.requires_grad for _, p in groups["llm"] + groups["vision"])
    assert all(p.requires_grad for _, p in groups["arr_coc"] + groups["projector"])
    batch = processor([Image.new("RGB", (60, 50), "red")], ["what colour is it?"])
    with torch.no_grad():
        out = model(**batch)
    assert out.arr_coc.budgets.sum().item() == 576 and torch.isfinite(out.logits).all()


def test_llava15_7b_preset_loads_llava_hf_key_names_and_config(tmp_path):
    """llava-hf's LLaVA-1.5 folders were written by transformers 4.3x: float16 weights under language_model.model.*,
    language_model.lm_head.*, vision_tower.vision_model.* (this transformers writes vision_tower.* without the
    vision_model level), multi_modal_projector.*, and torch_dtype in config.json. Every weight lands where it does
    from the folder this transformers writes."""
    import json

    from safetensors.torch import load_file, save_file

    _tiny_llava_checkpoint(tmp_path / "new")
    ref = build_model("llava15_7b", [f"llm.name_or_path={tmp_path / 'new'}", "llm.dtype=float32"])[0].state_dict()
    _tiny_llava_checkpoint(tmp_path / "old")
    state = load_file(str(tmp_path / "old" / "model.safetensors"))
    assert any(k.startswith("language_model.model.layers.") for k in state)
    save_file({k.replace("vision_tower.", "vision_tower.vision_model.", 1): v.half() for k, v in state.items()},
              str(tmp_path / "old" / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((tmp_path / "old" / "config.json").read_text())
    assert "image_token_index" in cfg
    del cfg["dtype"]
    cfg.update(torch_dtype="float16", transformers_version="4.39.3")
    (tmp_path / "old" / "config.json").write_text(json.dumps(cfg))
    model, processor = build_model("llava15_7b", [f"llm.name_or_path={tmp_path / 'old'}", "llm.dtype=float32"])
    got = model.state_dict()
    assert model.config.image_token_id == processor.image_token_id and got.keys() == ref.keys()
    for k in ("vision.model.embeddings.patch_embedding.weight", "llava.model.multi_modal_projector.linear_1.weight",
              "llava.model.language_model.layers.1.self_attn.q_proj.weight", "llava.lm_head.weight"):
        torch.testing.assert_close(got[k], ref[k].half().float(), rtol=0, atol=0, msg=k)


def test_llava_checkpoint_with_missing_or_unexpected_weights_is_refused_by_name(tmp_path):
    """from_pretrained initialised a weight missing from the checkpoint at random and only logged it."""
    from safetensors.torch import load_file, save_file

    _tiny_llava_checkpoint(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    del state["language_model.model.layers.1.self_attn.q_proj.weight"]
    state["mm_projector.0.weight"] = torch.zeros(2)
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"1 missing \['model\.language_model\.layers\.1\.self_attn\.q_proj\.weight'\]"
                                         r", 1 unexpected \['mm_projector\.0\.weight'\]"):
        build_model("llava15_7b", [f"llm.name_or_path={tmp_path}", "llm.dtype=float32"])


@pytest.mark.parametrize("override,match", [
    ("train.max_stepz=3", r"train\.max_stepz"),
    ("optimizer.lr=1", r"optimizer"),
    ("model.arr_coc.budgett=3", r"budgett"),
    ("model.llm.text_config.hiden_size=3", r"hiden_size"),
    ("model.vision.backend=timm", r"vision\.backend"),
    ("dist.fsdp=maybe", r"dist\.fsdp"),
    ("train.batch_size=0", r"train\.batch_size"),
    ("no_equals_sign", r"key=value"),
    ("train.max_steps.sub=1", r"not a section"),
])
def test_bad_overrides_rejected(override, match):
    with pytest.raises(ValueError, match=match):
        load_train_cfg(CONFIG_DIR / "train" / "tiny.yaml", [override])


def test_good_overrides_apply():
    cfg = load_train_cfg(CONFIG_DIR / "train" / "tiny.yaml",
                         ["train.max_steps=3", "optim.lr=1e-4", "model.arr_coc.budget=48", "dist.fsdp=off",
                          "model_preset=tiny", "data.path=/tmp/x"])
    assert cfg.train.max_steps == 3 and cfg.optim.lr == 1e-4 and cfg.dist.fsdp == "off" and cfg.data.path == "/tmp/x"
    assert model_cfg(cfg).arr_coc["budget"] == 48


def test_unknown_preset_and_model_key():
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        load_model_cfg("huge")
    with pytest.raises(ValueError, match=r"vision\.modelname"):
        load_model_cfg("tiny", ["vision.modelname=x"])


def test_model_dict_merges_nested_overrides_over_the_preset():
    d = model_dict("tiny", {"arr_coc": {"budget": 48}, "pos_grid": [4, 4]})
    base = model_dict("tiny")
    assert d["arr_coc"] == {**base["arr_coc"], "budget": 48} and d["pos_grid"] == [4, 4]
    assert d["vision"] == base["vision"]
    assert load_model_cfg(d).arr_coc["budget"] == 48
    # A mapping merges into a mapping; any other value replaces; the inputs are left alone.
    a = {"x": {"y": 1, "z": 2}, "w": {"v": 0}}
    assert deep_merge(a, {"x": {"y": 5}, "w": None}) == {"x": {"y": 5, "z": 2}, "w": None}
    assert a == {"x": {"y": 1, "z": 2}, "w": {"v": 0}}


@pytest.mark.parametrize("path", ["configs/train/tiny.yaml", "configs/eval/tiny.yaml"])
def test_tiny_configs_generate_the_shared_tiny_benchmark(path):
    from models.builders import load_yaml
    from training.benchmark import TINY_GENERATOR

    assert load_yaml(path)["data"]["generate_cfg"] == TINY_GENERATOR


# -- the config plumbing of models/builders.py, on dicts and small files ----------------------------------------------
@dataclass
class _Leaf:
    x: int = 0


@dataclass
class _Mid:
    leaf: _Leaf = field(default_factory=_Leaf)


@dataclass
class _Top:
    mid: _Mid = field(default_factory=_Mid)


def test_sections_may_be_empty_but_not_values_and_unknown_keys_carry_their_full_path():
    # A YAML section whose keys are all commented out reads as None: the section's defaults.
    assert load_model_cfg({**model_dict("tiny"), "query": None}).query == QueryCfg()
    with pytest.raises(ValueError, match=r"config section 'vision' must be a mapping, got int: 3"):
        load_model_cfg("tiny", ["vision=3"])
    with pytest.raises(ValueError, match=r"key\(s\) \['mid\.leaf\.y'\]; known keys of mid\.leaf: \['x'\]"):
        dataclass_from_dict(_Top, {"mid": {"leaf": {"y": 1}}})
    assert dataclass_from_dict(_Top, {"mid": {"leaf": {"x": 2}}}).mid.leaf.x == 2


def test_overrides_refuse_empty_components_and_values_used_as_sections_and_leave_the_input_alone():
    with pytest.raises(ValueError, match=r"override key 'vision\.\.model_name' has an empty component"):
        load_model_cfg("tiny", ["vision..model_name=x"])
    # A false-looking value (False, 0, "") is still a value, not a missing section to create.
    full = model_dict("tiny")
    assert full["use_pixel_entropy"] is False and full["vision"]["feature_layer"] == -2
    with pytest.raises(ValueError, match=r"'use_pixel_entropy' is a value \(False\), not a section"):
        load_model_cfg(full, ["use_pixel_entropy.x=1"])
    assert load_model_cfg(full, ["arr_coc.budget=48"]).arr_coc["budget"] == 48
    assert full["arr_coc"]["budget"] == 32  # the caller's nested dicts are not written into


def test_model_yaml_files_missing_empty_or_not_a_mapping(tmp_path):
    with pytest.raises(ValueError, match=r"config file '.*missing\.yaml' does not exist"):
        load_model_cfg(str(tmp_path / "missing.yaml"))
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    assert load_yaml(tmp_path / "empty.yaml") == {}
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match=r"config file '.*list\.yaml' must hold a mapping, got list"):
        load_model_cfg(str(tmp_path / "list.yaml"))


def test_architecture_only_drops_only_the_open_clip_weights():
    # A config that names no backend uses open_clip (the default), so its weights file goes too.
    vit = "/elsewhere/vit.safetensors"
    cfg = {"vision": {"pretrained": vit}, "query": {"pretrained": vit}, "pos_embed": True}
    out = architecture_only(cfg)
    assert out["vision"]["pretrained"] is None and out["query"]["pretrained"] is None and out["pos_embed"] is True
    assert cfg["vision"]["pretrained"] == cfg["query"]["pretrained"] == vit
    # An open_clip query tower with weights of its own keeps them (it is not the vision tower's model).
    other = architecture_only({"vision": {"backend": "open_clip", "pretrained": "a.pt"}, "query": {"pretrained": "b"}})
    assert other["vision"]["pretrained"] is None and other["query"]["pretrained"] == "b"
    # HF towers keep their setting: it also fixes their architecture.
    hf = architecture_only({"vision": {"backend": "hf_clip", "pretrained": True, "model_name": "x"}})
    assert hf["vision"]["pretrained"] is True and hf["query"] == {}


def test_build_for_checkpoint_needs_no_open_clip_weights_file(tmp_path):
    cfg = model_dict("tiny", {"vision": {"pretrained": str(tmp_path / "gone.safetensors")}})
    with pytest.raises(Exception):
        build_model(cfg)  # the weights file it names is not there
    model, processor = build_for_checkpoint(cfg)
    assert model.budget == processor.budget == 32


def test_the_llava_backend_needs_a_checkpoint():
    with pytest.raises(ValueError, match=r"vision\.backend='llava'.*llm\.name_or_path must be set"):
        load_model_cfg("tiny", ["vision.backend=llava"])


def test_random_init_needs_a_model_type():
    with pytest.raises(ValueError, match=r"llm\.text_config needs a model_type \(e\.g\. 'llama'\) for random init"):
        load_model_cfg("tiny", ["llm.text_config.model_type=null"])


def test_vision_prune_false_keeps_the_blocks_after_the_feature_layer():
    torch.manual_seed(0)
    pruned, _ = build_model("tiny")
    full, _ = build_model("tiny", ["vision.prune=false"])
    n = len(full.vision.visual.transformer.resblocks)
    assert len(pruned.vision.visual.transformer.resblocks) == n - 1  # feature_layer -2: the last block goes


def test_a_tokenizer_of_its_own_overrides_the_checkpoints_and_gets_the_image_token(tmp_path):
    """llm.tokenizer wins over the checkpoint's; a tokenizer without the image token gets it, a longer one than the
    checkpoint's vocabulary grows the embeddings, and the checkpoint's config takes the new image token id and the
    new pad id."""
    from PIL import Image

    from models.processing import build_byte_tokenizer

    _tiny_llava_checkpoint(tmp_path / "ckpt", text_pad=7, tok_pad="<pad1>")  # its tokenizer pads with 260
    tok = build_byte_tokenizer("<img>")
    tok.add_special_tokens({"additional_special_tokens": [f"<x{i}>" for i in range(10)]})  # 270 tokens
    tok.save_pretrained(tmp_path / "tok")
    with pytest.warns(UserWarning, match=r"text_config.pad_token_id=7 is not the pad id .*tok': 0, '<pad>'"):
        model, processor = build_model("llava15_7b", [f"llm.name_or_path={tmp_path / 'ckpt'}", "llm.dtype=float32",
                                                      f"llm.tokenizer={tmp_path / 'tok'}"])
    assert processor.tokenizer.pad_token_id == 0 and processor.image_token_id == 270  # <image> added after them
    assert model.config.image_token_id == 270 and model.llava.get_input_embeddings().num_embeddings == 271
    assert model.config.text_config.pad_token_id == 0  # the id prompts are padded with, not the checkpoint's 7
    with torch.no_grad():
        out = model(**processor([Image.new("RGB", (48, 48), "red")], ["<x9> what colour?"]))
    assert out.arr_coc.budgets.sum().item() == 576 and torch.isfinite(out.logits).all()


def test_checkpoint_builds_name_a_missing_tokenizer_and_a_tower_that_does_not_fit(tmp_path):
    with pytest.raises(ValueError, match="llm.tokenizer is None but there is no llm.name_or_path"):
        build_model("tiny", ["llm.tokenizer=null"])
    _tiny_llava_checkpoint(tmp_path)  # its projector takes 16-wide features; the tiny open_clip tower gives 32
    with pytest.raises(ValueError, match="tower's width 32 does not fit the checkpoint's projector input 16"):
        build_model("tiny", [f"llm.name_or_path={tmp_path}", "llm.tokenizer=null"])


def test_open_clip_query_tower_shares_the_vision_weights_unless_it_names_its_own(tmp_path):
    from models.vision import create_open_clip

    files = {}
    for name, seed in (("vision.pt", 1), ("query.pt", 2)):
        torch.manual_seed(seed)
        files[name] = {k: v.clone() for k, v in create_open_clip("arr-coc-tiny-vit").state_dict().items()}
        torch.save(files[name], tmp_path / name)
    vis, own = files["vision.pt"], files["query.pt"]
    shared, processor = build_model("tiny", ["query.source=open_clip", "query.normalize=true",
                                             f"vision.pretrained={tmp_path / 'vision.pt'}"])
    torch.testing.assert_close(shared.vision.visual.conv1.weight, vis["visual.conv1.weight"], rtol=0, atol=0)
    torch.testing.assert_close(shared.query_encoder.clip.token_embedding.weight, vis["token_embedding.weight"],
                               rtol=0, atol=0)
    q = processor.encode_queries(["what colour is the circle?", "how many?"])
    assert q[0].shape == (2, 32)  # open_clip's tokenizer (its context length), not the LLM's
    with torch.no_grad():
        torch.testing.assert_close(shared.encode_query(*q).norm(dim=-1), torch.ones(2))  # query.normalize
    apart, _ = build_model("tiny", ["query.source=open_clip", f"vision.pretrained={tmp_path / 'vision.pt'}",
                                    f"query.pretrained={tmp_path / 'query.pt'}"])
    torch.testing.assert_close(apart.vision.visual.conv1.weight, vis["visual.conv1.weight"], rtol=0, atol=0)
    torch.testing.assert_close(apart.query_encoder.clip.token_embedding.weight, own["token_embedding.weight"],
                               rtol=0, atol=0)


@pytest.mark.parametrize("override, match", [("arr_coc.dim=16", r"arr_coc\.dim=16 / query_dim=32 disagree"),
                                             ("arr_coc.query_dim=16", r"arr_coc\.dim=32 / query_dim=16 disagree")])
def test_arr_coc_widths_that_disagree_with_the_towers_are_named(override, match):
    with pytest.raises(ValueError, match=match):
        build_model("tiny", [override])


def test_footprint_range_and_pixel_entropy_reach_the_model():
    model, _ = build_model("tiny", ["footprint_embed=true", "footprint_log2_range=[-2, 4]", "use_pixel_entropy=true"])
    assert model.footprint_embed.log2_range == (-2, 4) and model.use_pixel_entropy is True
    plain, _ = build_model("tiny")
    assert plain.footprint_embed is None and plain.use_pixel_entropy is False


def test_each_trainable_flag_freezes_its_own_part():
    flags = {"vision": False, "llm": True, "arr_coc": False, "projector": True, "query": False}
    model, _ = build_model("tiny", ["query.source=open_clip"] + [f"{k}_trainable={str(v).lower()}"
                                                                 for k, v in flags.items()])
    for part, params in model.parameter_groups().items():
        assert params and {p.requires_grad for _, p in params} == {flags[part]}, part


def test_llava_checkpoint_with_only_unexpected_weights_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    _tiny_llava_checkpoint(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    state["mm_projector.0.weight"] = torch.zeros(2)
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"0 missing \[\], 1 unexpected \['mm_projector\.0\.weight'\]"):
        build_model("llava15_7b", [f"llm.name_or_path={tmp_path}", "llm.dtype=float32"])


def test_random_init_vocabulary_must_hold_the_tokenizer():
    with pytest.raises(ValueError, match=r"text_config\.vocab_size=259 is smaller than the tokenizer \(260 tokens\)"):
        build_model("tiny", ["llm.text_config.vocab_size=259"])
    model, processor = build_model("tiny", ["llm.text_config.vocab_size=260"])  # exactly enough
    assert len(processor.tokenizer) == model.llava.get_input_embeddings().num_embeddings == 260


def test_random_init_takes_the_tokenizers_special_ids_and_the_projector_activation():
    model, processor = build_model("tiny", ["llm.projector_hidden_act=relu"])
    tok, text = processor.tokenizer, model.config.text_config
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)  # the byte tokenizer's
    assert (text.pad_token_id, text.bos_token_id, text.eos_token_id) == (0, 1, 2)
    assert getattr(model.config, "pad_token_id", None) == 0
    assert isinstance(model.llava.model.multi_modal_projector.act, torch.nn.ReLU)


def test_tower_settings_reach_the_towers(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    model, processor = build_model("tiny", ["vision.image_size=96"])  # 12x12 tokens: 3x3 per patch
    assert processor.image_size == model.vision.image_size == (96, 96) and model.vision.fine_grid == (3, 3)
    model, _ = build_model("tiny", ["query.source=open_clip", "query.model_name=arr-coc-small-vit"])
    assert model.arr_coc.query_dim == model.query_encoder.output_dim == 64  # the small config's, not the tiny's 32
    torch.manual_seed(0)
    hf = CLIPVisionModel(CLIPVisionConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=2,
                                          num_attention_heads=2, image_size=64, patch_size=8))
    hf.save_pretrained(tmp_path)
    model, _ = build_model("tiny", ["vision.backend=hf_clip", f"vision.model_name={tmp_path}",
                                    "vision.pretrained=true"])
    torch.testing.assert_close(model.vision.model.embeddings.patch_embedding.weight,
                               hf.get_input_embeddings().weight, rtol=0, atol=0)


def test_llava_checkpoint_trained_on_other_vision_features_warns_naming_both(tmp_path):
    """vision.backend: llava reads hidden_states[vision.feature_layer] without CLIP's class token, whatever the
    checkpoint's own vision_feature_layer / vision_feature_select_strategy: a checkpoint whose projector was trained
    on another layer, or with the class token ("full"), is warned about by name. LLaVA-1.5's own (-2, "default"),
    also written as the same layer counted from the front (3 blocks: hidden_states index 2 = -2), is not."""
    import json
    import warnings

    _tiny_llava_checkpoint(tmp_path)
    path = tmp_path / "config.json"
    base = json.loads(path.read_text())
    for layer, strategy, warned in ((-2, "default", False), (2, "default", False), (-1, "default", True),
                                    (-2, "full", True)):
        path.write_text(json.dumps({**base, "vision_feature_layer": layer, "vision_feature_select_strategy": strategy}))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            build_model("llava15_7b", [f"llm.name_or_path={tmp_path}", "llm.dtype=float32"])
        ours = [str(w.message) for w in caught if "vision_feature_layer" in str(w.message)]
        assert bool(ours) == warned, (layer, strategy, ours)
        if warned:
            assert f"vision_feature_layer={layer}, vision_feature_select_strategy='{strategy}'" in ours[0]
            assert "vision.feature_layer=-2 without 1 leading class token(s)" in ours[0]
