"""Shared encoder work in the spliced-fidelity evals: model.encode_from finishes the encoder exactly as encode()
with an edit would, and EvalSet's clean, mean-ablated and SAE-spliced runs equal full forward_spliced runs."""
import math

import pytest
import torch

from models.loading import load_dust3r
from models.sae import SAE, SAEConfig
from training.evaluate import EvalSet, evaluate
from training.hooks import extract, hook_sources

torch.set_num_threads(1)  # tiny ops: more threads than the 2 shared cores only slow them down
DEV = torch.device("cpu")


@pytest.fixture(scope="module")
def model():
    return load_dust3r("random-tiny", DEV, landscape_only=True)


def views(shape2=(64, 96), seed=0):
    """Two batches of 2 items; in view 2 the second item is a transposed portrait when the size allows."""
    g = torch.Generator().manual_seed(seed)
    v1 = dict(img=torch.rand(2, 3, 64, 96, generator=g) * 2 - 1, true_shape=torch.tensor([[64, 96]] * 2))
    ts2 = [list(shape2), list(shape2)[::-1]] if shape2[0] != shape2[1] else [list(shape2)] * 2
    return v1, dict(img=torch.rand(2, 3, *shape2, generator=g) * 2 - 1, true_shape=torch.tensor(ts2))


@pytest.mark.parametrize("name", ["patch_embed", "enc_blocks.0", "enc_blocks.1", "enc_norm"])
def test_encode_from_equals_encode_with_the_edit(model, name):
    v1, v2 = views()
    edit = lambda t, v: t * 0.5 + v  # noqa: E731  (any replacement, different per view)
    with torch.no_grad():
        rec = {}
        clean = model.encode(v1, v2, edits={name: lambda t, v: rec.setdefault(v, t)})
        ref = model.encode(v1, v2, edits={name: edit})
        got = model.encode_from(name, [edit(rec[1], 1), edit(rec[2], 2)], clean)
    for a, b in zip(got, ref):
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.pos, b.pos) and a.hw == b.hw
    with pytest.raises(AssertionError, match="block output"):
        model.encode_from("enc_blocks.1.attn", [rec[1], rec[2]], clean)
    with torch.no_grad():  # views of two sizes are encoded apart: no shared batch to resume
        mixed = model.encode(*views((64, 64)))
    with pytest.raises(AssertionError, match="one image size"):
        model.encode_from(name, [e.tokens for e in mixed], mixed)


HOOKS = ["enc_blocks.1", "enc_norm", "dec_blocks*.1", "dec_blocks2.0", "enc_blocks.1.mlp"]


@pytest.mark.parametrize("hook", HOOKS)
def test_eval_runs_equal_full_spliced_forwards(model, hook):
    sub_block = hook.count(".") == 2  # a point inside a block (models/dust3r.py), both views
    sources = [(hook, 1), (hook, 2)] if sub_block else hook_sources(hook, ("enc_blocks.", "enc_norm", "dec_blocks"))
    batches = [views(seed=0), views((64, 64), seed=1)]  # the second: views of two sizes
    toks = [extract(model, v1, v2, sources, DEV) for v1, v2 in batches]
    ev = EvalSet(toks[0][0], toks[0][1], sources=sources, model=model, batches=batches, device=DEV)
    sae = SAE(SAEConfig(d_in=32, n_latents=64, k=4))
    sae.init_from_sample(ev.tokens.reshape(-1, 32).float())

    def splice(t, v):
        return sae.decode(sae.encode(t.reshape(-1, 32).float())).reshape(t.shape).to(t.dtype)

    mean = {n: (lambda t, v, m=m: m.expand_as(t)) for n, m in ev.means.items()}
    for i, (v1, v2) in enumerate(batches):
        for edits in ({}, mean, {n: splice for n in ev.means}):
            with torch.no_grad():
                ref1, ref2 = model.forward_spliced(v1, v2, edits)
            pts, conf = ev._run(i, edits)
            assert torch.equal(pts[0], ref1["pts3d"]) and torch.equal(pts[1], ref2["pts3d_in_other_view"])
            assert torch.equal(conf[0], ref1["conf"]) and torch.equal(conf[1], ref2["conf"])
    state = ev.encoded[0]
    assert (state is None) == sub_block  # a point inside an encoder block: full forwards
    assert state is None or (state[1] is None) == hook.startswith("dec")
    assert (ev.encoded[1] is None) == (not hook.startswith("dec"))  # two sizes: encoder hooks take full forwards
    out = evaluate(sae, ev)
    assert math.isfinite(out["L_sae_vs_clean"]) and out["L_clean_vs_clean"] == ev.loss_clean["clean"]


def test_decoder_hook_evals_skip_the_encoder(model):
    sources = hook_sources("dec_blocks*.1", ("dec_blocks",))
    v1, v2 = views()
    ev = EvalSet(*extract(model, v1, v2, sources, DEV), sources=sources, model=model, batches=[(v1, v2)], device=DEV)
    sae = SAE(SAEConfig(d_in=32, n_latents=64, k=4))
    sae.init_from_sample(ev.tokens.reshape(-1, 32).float())
    calls = []
    handle = model.enc_blocks[0].register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        evaluate(sae, ev)
        evaluate(sae, ev)
    finally:
        handle.remove()
    assert calls == []  # both evals' spliced runs start at the decoder
