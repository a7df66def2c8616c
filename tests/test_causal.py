"""Per-latent causal effects (analysis/causal.py) on random-tiny DUSt3R with a planted SAE."""
import numpy as np
import pytest
import torch

from analysis import causal
from data import collate_pairs, make_dataset
from models.sae import SAE, SAEConfig
from analysis import figures
from models.loading import load_dust3r

RES = 96
DEC, ENC = ("dec_blocks.1", "dec_blocks2.1"), ("enc_blocks.1", "enc_blocks.1")  # (view-1, view-2) hook points


def planted_sae(model, pairs, sources):
    """Latent 0 fires (and wins the top-k, strongly) where a token's centred projection on the tokens' first
    principal direction u is above its median (half of them), and writes along u; latent 1 has a zero decoder row."""
    view1, view2 = collate_pairs(pairs)
    out = model.forward_hooks(view1, view2, hooks=sorted(set(sources)))
    x = torch.cat([out.tokens[name][v].reshape(-1, out.tokens[name][v].shape[-1]) for v, name in enumerate(sources)])
    mu = x.mean(0)
    u = torch.linalg.svd(x - mu, full_matrices=False).Vh[0]
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=x.shape[1], n_latents=64, k=4)).eval()
    with torch.no_grad():
        sae.norm_mean.copy_(mu)
        sae.W_enc[:, 0] = 100 * u
        sae.b_enc[0] = -100 * ((x - mu) @ u).median()  # threshold at the median projection: half the tokens
        sae.W_dec[0] = u
        sae.W_dec[1] = 0.0
    return sae


@pytest.fixture(scope="module")
def setup():
    model = load_dust3r("random-tiny", landscape_only=True)
    ds = make_dataset("builtin", resolution=RES, split="val", n_scenes=1)
    pairs = [ds[0], ds[1]]
    return model, {s[0]: planted_sae(model, pairs, s) for s in (DEC, ENC)}, pairs


def test_zero_decoder_row_changes_nothing(setup):
    model, saes, pairs = setup
    e = causal.causal_effects(model, saes["dec_blocks.1"], DEC, pairs, [1, 1])
    for r in e:
        assert r["mean_disp"] == 0.0 and r["dconf"] == [0.0, 0.0] and r["control_mean_disp"] == 0.0
        assert all(d.shape == (RES, RES) and not d.any() for d in r["disp"])


def test_strong_latent_changes_outputs_where_it_fires(setup):
    model, saes, pairs = setup
    sae = saes["dec_blocks.1"]
    # last decoder block: the head reads each token alone, so the change is exactly local
    e = causal.causal_effects(model, sae, DEC, pairs, [0, 0], batch_size=2)
    for r in e:
        on = [np.kron(a > 0, np.ones((16, 16), bool)) for a in r["act"]]
        assert 0.05 < np.mean(np.concatenate([m.ravel() for m in on])) < 0.95  # fires on part of the pair
        assert r["mean_disp_firing"] > 0.01 and r["mean_disp_silent"] == 0.0
        assert all((d[~m] == 0).all() and (d[m] > 0).mean() > 0.99 for d, m in zip(r["disp"], on))
        assert r["dconf"][0] != 0.0
    sae = saes["enc_blocks.1"]
    # encoder hook: the decoder spreads the change, but it stays largest where the latent fires
    enc = causal.causal_effects(model, sae, ENC, pairs, [0, 0])
    assert all(r["mean_disp_firing"] > 1.2 * r["mean_disp_silent"] > 0 for r in enc)
    # scale 1 is the clean run; batching does not change the numbers
    same = causal.causal_effects(model, sae, ENC, pairs, [0, 0], scale=1.0)
    assert all(r["mean_disp"] == 0.0 for r in same)
    alone = causal.causal_effects(model, sae, ENC, pairs[1:], [0], batch_size=1)
    assert alone[0]["mean_disp"] == pytest.approx(enc[1]["mean_disp"], rel=1e-4)
    assert alone[0]["control_mean_disp"] == pytest.approx(enc[1]["control_mean_disp"], rel=1e-4)


def test_heatmap_and_errors(setup):
    model, saes, pairs = setup
    sae = saes["dec_blocks.1"]
    with pytest.raises(ValueError, match="one pair per latent"):
        causal.causal_effects(model, sae, ENC, pairs, [0])
    e = causal.causal_effects(model, sae, DEC, pairs[:1], [0])[0]
    rgb = [figures.to_display(v["img"], v["true_shape"]) for v in pairs[0]]
    img = figures.effect_heatmap(*rgb, e, "latent 0")
    assert img.dtype == np.uint8 and img.shape[0] == RES + 2 * figures.CAPTION_H and img.shape[1] > 4 * RES
