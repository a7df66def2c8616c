"""analysis/pairings.py: (A, B), (B, A), (A, A) with one encoder run per image give exactly the tokens, grids and
outputs of three separate forwards, for encoder and decoder hook points, portrait items and mixed-size pairs."""
import pytest
import torch

from analysis.pairings import pairing_tokens
from models.loading import load_dust3r

torch.set_num_threads(1)  # tiny ops: more threads than the 2 shared cores only slow them down
DEV = torch.device("cpu")
HOOKS = [("enc_blocks.0", "enc_blocks.0"), ("enc_norm", "enc_norm"), ("dec_blocks.1", "dec_blocks2.1"),
         ("decoder_embed", "decoder_embed"), ("dec_norm", "dec_norm"), ("enc_blocks.1.attn", "enc_blocks.1.attn"),
         ("dec_blocks.0.mlp", "dec_blocks2.0.mlp")]


@pytest.fixture(scope="module")
def model():
    return load_dust3r("random-tiny", DEV, landscape_only=True)


def views(shape2=(64, 96)):
    """Two landscape batches of 3 items; view 2's second item is a transposed portrait (ManyAR convention)."""
    g = torch.Generator().manual_seed(0)
    v1 = dict(img=torch.rand(3, 3, 64, 96, generator=g) * 2 - 1, true_shape=torch.tensor([[64, 96]] * 3))
    ts2 = torch.tensor([list(shape2), list(shape2)[::-1], list(shape2)]) if shape2[0] != shape2[1] else \
        torch.tensor([list(shape2)] * 3)
    v2 = dict(img=torch.rand(3, 3, *shape2, generator=g) * 2 - 1, true_shape=ts2)
    return v1, v2


@pytest.mark.parametrize("hooks", HOOKS, ids=[h[0] for h in HOOKS])
@pytest.mark.parametrize("shape2", [(64, 96), (64, 64)], ids=["same-size", "mixed-size"])
def test_reused_encoder_gives_the_three_pass_outputs(model, hooks, shape2):
    v1, v2 = views(shape2)
    got, res = pairing_tokens(model, v1, v2, hooks, controls=True, device=DEV)
    ref, res_ref = pairing_tokens(model, v1, v2, hooks, controls=True, device=DEV, reuse=False)
    assert list(got) == list(ref) == ["ab", "ba", "aa"]
    for p in got:
        for a, b in zip(got[p], ref[p]):
            assert a.shape == b.shape and torch.equal(a, b), p  # bit for bit
    for r, rr in zip(res, res_ref):
        assert r.keys() == rr.keys() and all(torch.equal(r[k], rr[k]) for k in r)
    if hooks[0].startswith(("enc", "patch", "decoder_embed")):  # before the decoders: tokens belong to the image
        assert torch.equal(got["aa"][0], got["ab"][0]) and torch.equal(got["ba"][1], got["ab"][0])
    else:  # decoder blocks' tokens depend on the other view
        assert not torch.equal(got["aa"][0], got["ab"][0])


def test_without_controls_only_ab(model):
    got, _ = pairing_tokens(model, *views(), ("enc_norm", "enc_norm"), controls=False, device=DEV)
    assert list(got) == ["ab"]


def test_one_encoder_pass_per_image(model):
    calls = []
    handle = model.enc_blocks[0].register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    try:
        pairing_tokens(model, *views(), ("dec_blocks.1", "dec_blocks2.1"), controls=True, device=DEV)
        assert calls == [6]  # A and B (3 items each) in one batch, once
        calls.clear()
        pairing_tokens(model, *views(), ("dec_blocks.1", "dec_blocks2.1"), controls=True, device=DEV, reuse=False)
        assert calls == [6, 6, 6]  # the reference: (A, B), (B, A), (A, A)
    finally:
        handle.remove()
