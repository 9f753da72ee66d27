"""Vision towers → (B, K, h, w, D) patch grids, and the query encoders."""

from __future__ import annotations

import open_clip
import pytest
import torch

from models.text import LlmEmbeddingQuery, OpenClipText, masked_mean
from models.vision import HFVision, OpenClipVision, create_open_clip, hf_vision_from_config

HF_TINY = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2,
           "image_size": 32, "patch_size": 4}  # 8x8 token grid


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return create_open_clip("arr-coc-tiny-vit")


def test_open_clip_patch_layout_matches_token_grid(clip):
    import copy

    full = copy.deepcopy(clip.visual)  # unpruned reference
    vis = OpenClipVision(copy.deepcopy(clip.visual), patch_grid=(2, 4), feature_layer=-2)
    assert vis.fine_grid == (4, 2) and len(vis.visual.transformer.resblocks) == 1  # block 2 of 2 pruned
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = vis(x)
        grid = full.forward_intermediates(x, indices=[0], intermediates_only=True)["image_intermediates"][0]
    assert feats.shape == (2, 8, 4, 2, 32)
    # Patch k = (row, col) holds grid cells [row*4 + i, col*2 + j].
    for k, (r, c) in enumerate((r, c) for r in range(2) for c in range(4)):
        torch.testing.assert_close(feats[:, k], grid[:, :, r * 4:(r + 1) * 4, c * 2:(c + 1) * 2].permute(0, 2, 3, 1))


def test_open_clip_resampled_layout(clip):
    import copy

    # A K=200-style layout (10 x 20 patches) on an 8x8 token grid needs resampling to (10 h, 20 w).
    vis = OpenClipVision(copy.deepcopy(clip.visual), patch_grid=(10, 20), fine_grid=(2, 2))
    feats = vis(torch.randn(1, 3, 64, 64))
    assert feats.shape == (1, 200, 2, 2, 32) and torch.isfinite(feats).all()
    with pytest.raises(ValueError, match="does not divide"):
        OpenClipVision(copy.deepcopy(clip.visual), patch_grid=(3, 3))


def test_bad_pixels_rejected(clip):
    import copy

    vis = OpenClipVision(copy.deepcopy(clip.visual), patch_grid=(4, 4))
    with pytest.raises(ValueError, match=r"\(64, 64\)"):
        vis(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="B, 3, H, W"):
        vis(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="feature_layer=5"):
        OpenClipVision(copy.deepcopy(clip.visual), patch_grid=(4, 4), feature_layer=5)


@pytest.mark.parametrize("kind,prefix", [("clip", 1), ("siglip", 0)])
def test_hf_vision_drops_prefix_and_prunes(kind, prefix):
    torch.manual_seed(0)
    ref = hf_vision_from_config(kind, HF_TINY, patch_grid=(4, 4), prune=False, feature_layer=-2)
    vis = hf_vision_from_config(kind, HF_TINY, patch_grid=(4, 4), feature_layer=-2)
    vis.model.load_state_dict(ref.model.state_dict(), strict=False)
    assert isinstance(vis, HFVision) and vis.num_prefix_tokens == prefix
    assert len(vis.fsdp_blocks()) == 2 and len(ref.fsdp_blocks()) == 3
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = vis(x)
        hidden = ref.model(pixel_values=x, output_hidden_states=True).hidden_states[-2][:, prefix:]
    assert feats.shape == (2, 16, 2, 2, 16)
    grid = hidden.transpose(1, 2).reshape(2, 16, 8, 8)
    torch.testing.assert_close(feats[:, 5], grid[:, :, 2:4, 2:4].permute(0, 2, 3, 1))  # patch (1, 1)
    with pytest.raises(ValueError, match="unknown HF vision kind"):
        hf_vision_from_config("vit", HF_TINY, patch_grid=(4, 4))


def test_hf_vision_checkpoint_loads_from_a_full_clip_folder_and_refuses_missing_weights(tmp_path):
    # A full CLIP checkpoint (both towers, as openai/clip-vit-large-patch14-336) loads its vision tower; a weight
    # missing from it was initialised at random with a log line only.
    from safetensors.torch import load_file, save_file
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    full = CLIPModel(CLIPConfig(vision_config=HF_TINY, projection_dim=8,
                                text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                             "num_attention_heads": 2}))
    full.save_pretrained(tmp_path)
    vis = hf_vision_from_config("clip", name_or_path=str(tmp_path), patch_grid=(4, 4))
    torch.testing.assert_close(vis.model.embeddings.patch_embedding.weight,
                               full.vision_model.embeddings.patch_embedding.weight, rtol=0, atol=0)
    state = load_file(str(tmp_path / "model.safetensors"))
    del state["vision_model.pre_layrnorm.weight"]
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"1 weights of CLIPVisionModel are missing .*\['pre_layrnorm\.weight'\]"):
        hf_vision_from_config("clip", name_or_path=str(tmp_path), patch_grid=(4, 4))


def test_open_clip_text_query(clip):
    import copy

    text = OpenClipText(copy.deepcopy(clip), open_clip.get_tokenizer("arr-coc-tiny-vit"))
    assert text.clip.visual is None and text.output_dim == 32
    ids = text.tokenize(["what digit is in the red circle?", "how many triangles?"])
    q = text(ids)
    assert q.shape == (2, 32) and not torch.allclose(q[0], q[1])


def test_llm_embedding_query_is_masked_mean():
    e = torch.arange(12.0).view(1, 4, 3)
    m = torch.tensor([[True, True, False, False]])
    torch.testing.assert_close(LlmEmbeddingQuery()(e, m), e[:, :2].mean(1))
    assert masked_mean(e, torch.zeros(1, 4, dtype=torch.bool)).abs().sum() == 0
    with pytest.raises(ValueError, match="attention_mask shape"):
        LlmEmbeddingQuery()(e, m[:, :3])


def test_unknown_open_clip_model():
    with pytest.raises(ValueError, match="unknown open_clip model"):
        create_open_clip("no-such-model")


def test_masked_mean_without_a_mask_averages_each_row_over_the_sequence():
    x = torch.randn(2, 3, 4)
    out = masked_mean(x, None)
    assert out.shape == (2, 4)
    torch.testing.assert_close(out, x.mean(1))


def test_llm_embedding_query_refuses_a_2d_input_and_a_batch_mismatch():
    with pytest.raises(ValueError, match=r"\(B, L, E\)"):
        LlmEmbeddingQuery()(torch.randn(4, 3))
    with pytest.raises(ValueError, match="attention_mask shape"):  # same L, wrong B: would broadcast silently
        LlmEmbeddingQuery()(torch.randn(2, 4, 3), torch.ones(1, 4, dtype=torch.bool))


def test_open_clip_text_normalizes_and_drops_the_contrastive_head(clip):
    import copy

    text = OpenClipText(copy.deepcopy(clip), open_clip.get_tokenizer("arr-coc-tiny-vit"), normalize=True)
    q = text(text.tokenize(["what digit is in the red circle?", "how many triangles?"]))
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(2))
    assert text.clip.logit_scale is None
    assert not any("logit_" in k for k in text.state_dict())


def test_open_clip_text_width_is_the_projection_output_width():
    class Stub(torch.nn.Module):  # a non-square projection: (text width 8) -> (embedding width 5)
        def __init__(self):
            super().__init__()
            self.text_projection = torch.nn.Parameter(torch.zeros(8, 5))

        def encode_text(self, ids, normalize=False):
            return torch.zeros(ids.shape[0], 5)

    assert OpenClipText(Stub()).output_dim == 5


def test_create_open_clip_takes_slash_names_and_an_image_size_override():
    # open_clip spells ``ViT-B/32`` as ``ViT-B-32``; the override resizes the tower's input (and its token grid).
    model = create_open_clip("arr-coc/tiny-vit", image_size=32)
    assert tuple(model.visual.image_size) == (32, 32) and tuple(model.visual.grid_size) == (4, 4)


def test_layouts_that_cannot_be_cut_are_refused(clip):
    import copy

    from models.vision import default_pos_grid

    visual = copy.deepcopy(clip.visual)  # an 8x8 token grid
    for bad in ((0, 2), (2,), (2, 2, 2)):
        with pytest.raises(ValueError, match="patch_grid must be two positive ints"):
            OpenClipVision(visual, patch_grid=bad, fine_grid=(2, 2), prune=False)
    for bad in ((0, 2), (2,)):
        with pytest.raises(ValueError, match="fine_grid must be two positive ints"):
            OpenClipVision(visual, patch_grid=(2, 2), fine_grid=bad, prune=False)
    with pytest.raises(ValueError, match="does not divide"):  # rows do not divide, columns do
        OpenClipVision(visual, patch_grid=(3, 4), prune=False)
    vis = OpenClipVision(visual, patch_grid=(2, 4), prune=False)
    assert vis.num_patches == 8 and vis.fine_grid == (4, 2) and default_pos_grid(vis) == (8, 8)


def test_open_clip_resampling_is_bilinear_half_pixel_and_antialiased_only_when_shrinking(clip):
    import copy

    import torch.nn.functional as F

    torch.manual_seed(0)
    grid = torch.randn(1, 32, 8, 8)
    for patch_grid, fine_grid, shrink in (((2, 4), (2, 4), True),  # (4, 16): rows shrink, columns grow
                                          ((4, 2), (3, 2), True),  # (12, 4): rows grow, columns shrink
                                          ((5, 5), (2, 2), False)):  # (10, 10): both grow
        vis = OpenClipVision(copy.deepcopy(clip.visual), patch_grid=patch_grid, fine_grid=fine_grid, prune=False)
        size = (patch_grid[0] * fine_grid[0], patch_grid[1] * fine_grid[1])
        ref = F.interpolate(grid, size=size, mode="bilinear", align_corners=False, antialias=shrink)
        gh, gw = patch_grid
        h, w = fine_grid
        expect = ref.reshape(1, 32, gh, h, gw, w).permute(0, 2, 4, 3, 5, 1).reshape(1, gh * gw, h, w, 32)
        torch.testing.assert_close(vis.to_patches(grid), expect)


def test_open_clip_tower_checks_its_input_and_reads_the_configured_block(clip):
    import copy

    with pytest.raises(ValueError, match="needs an open_clip VisionTransformer, got Linear"):
        OpenClipVision(torch.nn.Linear(2, 2), patch_grid=(2, 2))
    vis = OpenClipVision(copy.deepcopy(clip.visual), patch_grid=(4, 4))
    with pytest.raises(ValueError, match=r"B, 3, H, W\), got \(1, 4, 64, 64\)"):
        vis(torch.randn(1, 4, 64, 64))
    # The default is the penultimate block (LLaVA's); 0 is the first block, not the last; 2 is past the end.
    assert vis.layer_index == 0 and len(vis.fsdp_blocks()) == 1
    with pytest.raises(ValueError, match="feature_layer=2 out of range"):
        OpenClipVision(copy.deepcopy(clip.visual), patch_grid=(4, 4), feature_layer=2)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pruned = OpenClipVision(copy.deepcopy(clip.visual), patch_grid=(4, 4), feature_layer=0)(x)
        full = OpenClipVision(copy.deepcopy(clip.visual), patch_grid=(4, 4), feature_layer=0, prune=False)
        assert full.layer_index == 0 and len(full.fsdp_blocks()) == 2
        torch.testing.assert_close(full(x), pruned)  # the unpruned tower still reads block 0, not its last block


def test_open_clip_pruning_drops_the_head_norm_and_pooling_weights(clip):
    import copy

    visual = copy.deepcopy(clip.visual)
    visual.attn_pool = torch.nn.Linear(32, 32)  # as an attentional-pool tower (CoCa) carries
    vis = OpenClipVision(visual, patch_grid=(4, 4))
    assert vis.visual.attn_pool is None and vis.visual.proj is None
    assert not any(k.startswith(("visual.ln_post", "visual.attn_pool", "visual.proj")) for k in vis.state_dict())


def test_open_clip_normalisation_follows_the_towers_preprocess_config(clip):
    import copy

    visual = copy.deepcopy(clip.visual)
    visual.preprocess_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    vis = OpenClipVision(visual, patch_grid=(4, 4), prune=False)
    assert vis.image_mean == (0.5, 0.5, 0.5) and vis.image_std == (0.25, 0.25, 0.25)
    vis = OpenClipVision(visual, patch_grid=(4, 4), prune=False, image_mean=(0.1, 0.2, 0.3), image_std=(1, 2, 3))
    assert vis.image_mean == (0.1, 0.2, 0.3) and vis.image_std == (1.0, 2.0, 3.0)


def test_open_clip_tower_in_bf16_takes_float32_pixels(clip):
    import copy

    vis = OpenClipVision(copy.deepcopy(clip.visual).to(torch.bfloat16), patch_grid=(4, 4))
    with torch.no_grad():
        feats = vis(torch.randn(1, 3, 64, 64))
    assert feats.dtype == torch.bfloat16 and feats.shape == (1, 16, 2, 2, 32)


def test_hf_vision_defaults_layer_range_and_token_count():
    clip_tower = hf_vision_from_config("clip", HF_TINY, patch_grid=(4, 4), prune=False)
    siglip = hf_vision_from_config("siglip", HF_TINY, patch_grid=(4, 4), prune=False)
    assert siglip.image_mean == (0.5,) * 3 and siglip.image_std == (0.5,) * 3
    assert clip_tower.image_mean != (0.5,) * 3
    # hidden_states holds 4 entries for 3 blocks: indices 0..3 and -4..-1.
    assert hf_vision_from_config("clip", HF_TINY, patch_grid=(4, 4), feature_layer=3).hidden_index == 3
    for bad in (4, -5):
        with pytest.raises(ValueError, match=f"feature_layer={bad} out of range for hidden_states of length 4"):
            hf_vision_from_config("clip", HF_TINY, patch_grid=(4, 4), feature_layer=bad)
    # A prefix count that leaves the wrong number of spatial tokens is refused, not reshaped into a wrong grid.
    bad = HFVision(clip_tower.model, patch_grid=(4, 4), num_prefix_tokens=0, prune=False)
    with pytest.raises(ValueError, match=r"returned 65 spatial tokens, expected 8x8=64"):
        bad(torch.randn(1, 3, 32, 32))


def test_hf_vision_prunes_a_tower_nested_under_vision_model():
    # Some wrappers (a LLaVA vision tower, older transformers layouts) hold the encoder under ``vision_model``.
    class Nested(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.vision_model, self.config = inner, inner.config

        def forward(self, **kwargs):
            return self.vision_model(**kwargs)

    inner = hf_vision_from_config("clip", HF_TINY, patch_grid=(4, 4), prune=False).model
    vis = HFVision(Nested(inner), patch_grid=(4, 4), feature_layer=-2)
    assert len(vis.fsdp_blocks()) == 2 and len(inner.encoder.layers) == 2


def test_layouts_with_float_or_bool_entries_are_refused_not_truncated(clip):
    import copy

    # int() truncated them: patch_grid (2.5, 2) built a (2, 2) layout and fine_grid (2.7, 2) a (2, 2) one, and True
    # counted as 1 row; arr_coc's own patch_grid check (_grid_pair) refuses them, naming the entry.
    visual = copy.deepcopy(clip.visual)  # an 8x8 token grid
    for bad in ((2.5, 2), (True, 2)):
        with pytest.raises(ValueError, match=rf"patch_grid \({bad[0]}, 2\) entry must be an integer"):
            OpenClipVision(visual, patch_grid=bad, fine_grid=(2, 2), prune=False)
    with pytest.raises(ValueError, match=r"fine_grid \(2.7, 2\) entry must be an integer, got float: 2.7"):
        OpenClipVision(visual, patch_grid=(2, 2), fine_grid=(2.7, 2), prune=False)
    vis = OpenClipVision(visual, patch_grid=(2.0, 4), fine_grid=[4.0, 2], prune=False)  # integral floats are fine
    assert vis.patch_grid == (2, 4) and vis.fine_grid == (4, 2)


def test_open_clip_patch_dropout_is_switched_off_so_training_keeps_the_whole_grid(clip):
    import copy

    from open_clip.transformer import PatchDropout

    # An open_clip config with patch_dropout > 0 deletes tokens at random in train mode; forward_intermediates then
    # reshaped the survivors into a wrong grid (at p=0.5, the 32 kept patch tokens of width 32 came back as an 8x8
    # grid of width 16, silently). PatchDropout is the identity in eval mode, so the eval-mode output of the same
    # tower is the reference a training step must reproduce (the tiny tower has no other dropout).
    visual = copy.deepcopy(clip.visual)
    visual.patch_dropout = PatchDropout(0.5)
    with pytest.warns(UserWarning, match="patch_dropout=0.5"):
        vis = OpenClipVision(visual, patch_grid=(4, 4))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expect = vis.eval()(x)
        got = vis.train()(x)
    assert got.shape == (2, 16, 2, 2, 32)
    torch.testing.assert_close(got, expect)


def test_a_non_integer_feature_layer_is_refused_by_name(clip):
    import copy

    # 1.5 failed deep inside (TypeError "slice indices must be integers") and True was read as block 1; both backends
    # now refuse them with a ValueError naming the value, and an integral float is its integer.
    for bad, shown in ((1.5, "float: 1.5"), (True, "bool: True"), ("1", "str: '1'")):
        with pytest.raises(ValueError, match=f"feature_layer must be an integer, got {shown}"):
            OpenClipVision(copy.deepcopy(clip.visual), patch_grid=(2, 2), feature_layer=bad)
        with pytest.raises(ValueError, match=f"feature_layer must be an integer, got {shown}"):
            hf_vision_from_config("clip", HF_TINY, patch_grid=(2, 2), feature_layer=bad)
    assert OpenClipVision(copy.deepcopy(clip.visual), patch_grid=(2, 2), feature_layer=-1.0).layer_index == 1
    assert hf_vision_from_config("clip", HF_TINY, patch_grid=(2, 2), feature_layer=-2.0).hidden_index == 2
