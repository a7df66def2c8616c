"""training/hooks.py: the one parser of hook names and what is built on it."""
import pytest

from training.hooks import hook_rank, hook_sources, parse_hook, pooled_branches, view_sources


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
