"""training/hooks.py: the one parser of hook names and what is built on it."""
import pytest
import torch

from models.loading import load_dust3r
from training.hooks import check_hook, extract, hook_rank, hook_sources, parse_hook, pooled_branches, view_sources


def test_hook_sources():
    assert hook_sources("enc_blocks.3", ("enc_blocks.", "enc_norm")) == [("enc_blocks.3", 1), ("enc_blocks.3", 2)]
    dec = ("dec_blocks.", "dec_blocks2.", "dec_blocks*.")
    assert hook_sources("dec_blocks.1", dec) == [("dec_blocks.1", 1)]
    assert hook_sources("dec_blocks2.1", dec) == [("dec_blocks2.1", 2)]
    assert hook_sources("dec_blocks*.1", dec) == [("dec_blocks.1", 1), ("dec_blocks2.1", 2)]
    with pytest.raises(ValueError, match="starting with"):
        hook_sources("dec_blocks.1", ("enc_blocks.", "enc_norm"))  # decoder point in the encoder script




def test_parse_hook_and_its_users():
    assert parse_hook("dec_blocks*.5") == ("dec_blocks*", 5) and parse_hook("enc_norm") == ("enc_norm", None)
    for bad in ("enc_blocks", "enc_blocks.x", "enc_norm.1", "dec_blocks3.1", "blocks.1"):
        with pytest.raises(ValueError, match="expected one of"):
            parse_hook(bad)
    assert view_sources("dec_blocks2.3") == view_sources("dec_blocks*.3") == ("dec_blocks.3", "dec_blocks2.3")
    assert view_sources("enc_blocks.3") == ("enc_blocks.3", "enc_blocks.3")
    order = ["patch_embed", "enc_blocks.0", "enc_blocks.23", "enc_norm", "decoder_embed", "dec_blocks.0",
             "dec_blocks*.11", "dec_norm"]
    assert sorted(order[::-1], key=hook_rank) == order
    assert hook_rank("dec_blocks.4") == hook_rank("dec_blocks2.4") == hook_rank("dec_blocks*.4")
    assert pooled_branches(hook_sources("dec_blocks*.1", ("dec_blocks*.",))) == [1, 2]
    assert pooled_branches(hook_sources("enc_norm", ("enc_norm",))) == []


def test_sub_block_hook_names():
    dec = ("dec_blocks.", "dec_blocks2.", "dec_blocks*.")
    assert parse_hook("dec_blocks*.5.cross_attn") == ("dec_blocks*", 5)
    assert parse_hook("enc_blocks.3.mlp") == ("enc_blocks", 3)
    for bad in ("enc_blocks.3.cross_attn", "enc_norm.attn", "dec_blocks.5.ff", "dec_blocks.5.attn.x", "enc_blocks.x.y"):
        with pytest.raises(ValueError, match="expected one of"):
            parse_hook(bad)
    both = [("dec_blocks.5.cross_attn", 1), ("dec_blocks2.5.cross_attn", 2)]
    assert hook_sources("dec_blocks*.5.cross_attn", dec) == both
    assert hook_sources("dec_blocks2.5.attn", dec) == [("dec_blocks2.5.attn", 2)]
    assert hook_sources("enc_blocks.3.attn", ("enc_blocks.",)) == [("enc_blocks.3.attn", 1), ("enc_blocks.3.attn", 2)]
    assert view_sources("dec_blocks.5.mlp") == ("dec_blocks.5.mlp", "dec_blocks2.5.mlp")
    order = ["enc_blocks.2", "enc_blocks.3.attn", "enc_blocks.3.mlp", "enc_norm", "dec_blocks.0",
             "dec_blocks*.1.attn", "dec_blocks2.1.cross_attn", "dec_blocks.1", "dec_norm"]
    assert sorted(order[::-1], key=hook_rank) == order


def test_every_model_hook_point_parses_and_extracts():
    """Every name the model offers is a valid hook string, and its tokens come out of `extract` for the right views."""
    model = load_dust3r("random-tiny", log=None)
    for name in model.hook_points:
        parse_hook(name)
    with pytest.raises(ValueError, match=r"dec_blocks\.9\.attn'\] not in this model.*cross_attn"):
        check_hook(model, [("dec_blocks.9.attn", 1)])  # random-tiny has two decoder blocks
    pair = [dict(img=torch.rand(1, 3, 32, 48) * 2 - 1, true_shape=torch.tensor([[32, 48]])) for _ in range(2)]
    for hook, prefixes in (("dec_blocks*.1.cross_attn", ("dec_blocks*.",)), ("enc_blocks.1.attn", ("enc_blocks.",))):
        sources = hook_sources(hook, prefixes)
        check_hook(model, sources)
        x, branch = extract(model, *pair, sources, torch.device("cpu"))
        ref = model.forward_hooks(*pair, [n for n, _ in sources]).tokens
        assert torch.equal(x, torch.cat([ref[n][v - 1] for n, v in sources], dim=1).half())
        assert branch.tolist() == [v for n, v in sources for _ in range(ref[n][v - 1].shape[1])]
