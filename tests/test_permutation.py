"""Calibration of the consistency tests (analysis/permutation.py, analysis/consistency.py).

Global-null latents: view 2 drawn independently of view 1, at the sparsity of real TopK SAE latents that reach
the support threshold (firing on 1-10 % of patches, in spatially correlated blobs of ~3 patches, exponential
magnitudes), on a 14x14 grid (224 px) with a (1, 2)-patch shift as the correspondence. Several seeds.
"""
import numpy as np
import pytest
import torch

from analysis.consistency import consistency, layer_effect
from analysis.permutation import benjamini_hochberg, sign_flip_pvalues
from analysis.multiview import PairActivations

torch.set_num_threads(1)
H = W = 14
N = H * W


def _shift_corr(dy=1, dx=2):
    y, x = np.divmod(np.arange(N), W)
    return np.where((y + dy < H) & (x + dx < W), (y + dy) * W + x + dx, -1)


def _blobs(rng, S, freq):
    seeds = (rng.random((N, S)) < freq / 3).reshape(H, W, S)
    fire = seeds.copy()
    fire[1:] |= seeds[:-1]  # each seed also fires the patch below and the one to its right
    fire[:, 1:] |= seeds[:, :-1]
    return np.where(fire.reshape(N, S), rng.exponential(1.0, (N, S)), 0).astype(np.float32)


def _run(seed, n_pairs=24, S=200, planted=0):
    """Global-null latents; the first `planted` are made consistent (view 2 = view 1 at the match, +-20 %)."""
    rng = np.random.default_rng(seed)
    freq = np.exp(rng.uniform(np.log(0.01), np.log(0.1), S))
    corr = _shift_corr()
    pa, corrs, apps = PairActivations(), [], []
    for n in range(n_pairs):
        z1, z2 = _blobs(rng, S, freq), _blobs(rng, S, freq)
        if planted:
            m = corr >= 0
            z2[corr[m], :planted] = z1[m, :planted] * rng.uniform(0.8, 1.2, (m.sum(), planted))
        pa.add(z1[None], z2[None], [(H, W)], [(H, W)], [f"scene{n % 4}"])
        corrs.append(corr)
        apps.append(np.where(corr >= 0, (corr + 7 * W + 5) % N, -1))  # a far-away stand-in 'appearance' target
    return consistency(pa.finalize(), corrs, apps, min_support=20, seed=seed)


def test_global_null_is_calibrated():
    runs = [_run(seed) for seed in range(20)]
    p = np.concatenate([c["p"][c["tested"]] for c in runs])
    assert len(p) > 3000  # most latents are tested: the check has power to see excess small p-values
    assert np.mean(p < 1e-3) <= 0.002
    assert np.mean([(c["q"][c["tested"]] <= 0.05).any() for c in runs]) <= 0.05  # BH finds nothing in >= 95 %
    assert not any(c["consistent"].any() for c in runs)
    for j in runs[0]["nulls"]:  # each null's own test, before the intersection-union max: near nominal
        pj = np.concatenate([c[f"p_{j}"][c["tested"]] for c in runs])
        assert np.mean(pj < 1e-3) <= 0.002, j
        assert np.mean(pj < 0.05) <= 0.06, j


def test_planted_latents_are_found():
    c = _run(99, planted=40)
    assert c["tested"][:40].all()
    assert c["consistent"][:40].mean() >= 0.95  # recall
    assert c["consistent"][40:].mean() <= 0.01
    assert (c["gain"][:40] > 0.5).all() and np.nanmax(np.abs(c["gain"][40:])) < 0.2
    eff = layer_effect(c["sums"], n_boot=100)
    assert eff["lo"] <= eff["gain"] <= eff["hi"] and eff["lo"] > 0


def test_sign_flip_p_values_are_exact_under_exchangeability():
    rng = np.random.default_rng(0)
    U, S = 30, 4000
    a = rng.exponential(1.0, (2, U, S)) * (rng.random((2, U, S)) < 0.3)  # exchangeable true / null sums
    mass = 3 * a + rng.exponential(1.0, (2, U, S))
    p, draws = sign_flip_pvalues(a[0], mass[0], a[1], mass[1], n_max=2000, seed=1)
    for u in (0.01, 0.05, 0.2, 0.5):
        assert np.mean(p <= u) <= u + 3 * np.sqrt(u / S)
    assert draws.mean() < 100  # sequential stopping: null latents need a few dozen draws, not n_max


def test_sign_flip_reaches_its_floor_and_stops_early():
    U = 40
    a_true, a_null = np.full((U, 2), 1.0), np.zeros((U, 2))
    a_null[:, 1] = 1.0  # latent 1: true = null exactly (all swaps tie: p = 1)
    mass = np.full((U, 2), 4.0)
    p, draws = sign_flip_pvalues(a_true, mass, a_null, mass, n_max=999, h=10)
    assert p[0] == pytest.approx(1 / 1000) and draws[0] == 999  # never exceeded: (0 + 1) / (n_max + 1)
    assert p[1] == 1.0 and draws[1] == 10  # ties count: stops at the 10th draw with p = 10 / 10


def test_benjamini_hochberg():
    p = np.array([0.01, 0.04, 0.03, 0.5, np.nan])
    q = benjamini_hochberg(p)
    np.testing.assert_allclose(q[:4], [0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.5])  # step-up: min over ranks >= i
    assert np.isnan(q[4])
