"""Multi-view metrics on synthetic activations with planted latents (analysis/multiview.py).

Planted latents on an 8x8 grid, view-2 token = view-1 token shifted by (1, 2) patches:
0 fires at corresponding patches of both views (consistent), 1 at random places in each view,
2 in view 1 only, 3 never, 4 at a fixed grid position in both views (positional: the same-position
null must catch it), 5 dense noise everywhere.
"""
import numpy as np
import torch

from analysis import multiview as mv

H, W, S, P = 8, 8, 6, 40
N = H * W


def _shift_corr(dy=1, dx=2):
    y, x = np.divmod(np.arange(N), W)
    ok = (y + dy < H) & (x + dx < W)
    return np.where(ok, (y + dy) * W + x + dx, -1)


def planted(seed=0, n_pairs=P):
    rng = np.random.default_rng(seed)
    corr = _shift_corr()
    pa, corrs = mv.PairActivations(), []
    y, x = np.divmod(np.arange(N), W)
    for n in range(n_pairs):
        z1, z2 = np.zeros((N, S), np.float32), np.zeros((N, S), np.float32)
        m = (rng.random(N) < 0.3) & (corr >= 0)
        a = rng.uniform(0.5, 2.0, N)
        z1[m, 0], z2[corr[m], 0] = a[m], a[m] * rng.uniform(0.9, 1.1, m.sum())
        z1[rng.random(N) < 0.3, 1], z2[rng.random(N) < 0.3, 1] = 1.0, 1.0
        z1[rng.random(N) < 0.3, 2] = 1.0
        fixed = (y < 4) & (x < 4)
        z1[fixed, 4], z2[fixed, 4] = 1.0, 1.0
        z1[:, 5], z2[:, 5] = rng.random(N), rng.random(N)
        pa.add(torch.from_numpy(z1)[None], torch.from_numpy(z2)[None], [(H, W)], [(H, W)], [f"scene{n % 4}"])
        corrs.append(corr)
    return pa.finalize(), corrs


def test_planted_latents_are_classified():
    pa, corrs = planted()
    cons = mv.consistency(pa, corrs, n_perm=100, min_support=20)
    asym = mv.view_asymmetry(pa, n_boot=100)
    lab = mv.classify(cons, asym)
    assert lab[0] == "consistent" and cons["gain"][0] > 0.8 and cons["pearson"][0] > 0.9
    assert lab[1] == "neither" and not cons["significant"][1] and abs(cons["gain"][1]) < 0.1
    assert lab[2] == "view-1" and asym["va"][2] == 1.0 and asym["exclusivity"][2] == 1.0
    assert lab[3] == "dead" and not cons["tested"][3]
    # positional latent: high raw overlap but the same-position null is perfect -> not consistent
    assert cons["null_position"][4] == 1.0 and not cons["significant"][4]
    assert not cons["significant"][5]
    assert cons["p_empirical"][0] == 1 / 101  # no shuffled draw reaches the planted latent
    assert cons["p"][0] < 1e-6 and cons["p"][1] > 0.05  # normal tail beyond the 1/(n_perm+1) floor


def test_identical_pair_gives_consistency_one():
    rng = np.random.default_rng(1)
    pa, corrs = mv.PairActivations(), []
    for n in range(6):
        z = np.where(rng.random((N, S)) < 0.2, rng.random((N, S)), 0).astype(np.float32)
        pa.add(z[None], z[None], [(H, W)], [(H, W)], [f"s{n}"])  # (A, A): same codes both slots
        corrs.append(np.arange(N))
    pa.finalize()
    cons = mv.consistency(pa, corrs, n_perm=20, min_support=1)
    np.testing.assert_allclose(cons["jaccard"], 1.0)
    np.testing.assert_allclose(cons["pearson"], 1.0)
    np.testing.assert_allclose(cons["transfer"], 1.0)
    assert np.isnan(cons["gain"]).all()  # the same-position null is perfect too: gain undefined
    np.testing.assert_allclose(mv.view_asymmetry(pa)["va"], 0.0, atol=1e-12)


def test_nulls_and_bookkeeping():
    pa, corrs = planted(n_pairs=12)
    cons = mv.consistency(pa, corrs, n_perm=30, min_support=5)
    assert cons["n_matched"] == 12 * (corrs[0] >= 0).sum() and cons["n_pairs"] == 12
    # gain is measured against the strongest null
    t = cons["tested"]
    nm = np.stack([cons[k] for k in ("null_shuffle", "null_position", "null_shift", "null_scene")]).max(0)
    np.testing.assert_allclose(cons["null_max"][t], nm[t])  # no NaN null here: 4 scenes, tested latents
    np.testing.assert_allclose(cons["gain"][0], (cons["jaccard"][0] - nm[0]) / (1 - nm[0]))
    # random latent: every null is close to its true-correspondence value
    for k in ("null_shuffle", "null_shift", "null_scene"):
        assert abs(cons[k][1] - cons["jaccard"][1]) < 0.08
    # pair_maps gives back the planted maps
    a1, a2 = pa.pair_maps(0, 2)
    assert a1.shape == (H, W) and a2.sum() == 0 and a1.sum() > 0


def test_benjamini_hochberg_matches_hand_computation():
    p = np.array([0.01, 0.04, 0.03, np.nan, 0.5])
    q = mv.benjamini_hochberg(p)
    # sorted p 0.01, 0.03, 0.04, 0.5 -> p*m/rank 0.04, 0.06, 0.0533, 0.5 -> running min from the top
    np.testing.assert_allclose(q[[0, 1, 2, 4]], [0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.5])
    assert np.isnan(q[3])


def test_slot_swap_separates_branch_from_content():
    rng = np.random.default_rng(2)
    content = rng.random(10) * 3  # per-image amount of a "content" latent
    ab, ba = mv.PairActivations(), mv.PairActivations()
    for n in range(5):
        a, b = content[2 * n], content[2 * n + 1]
        # latent 0 follows content; latent 1 fires on whatever sits in slot 2 (branch identity)
        for store, (x1, x2) in ((ab, (a, b)), (ba, (b, a))):
            z1 = np.zeros((N, 2), np.float32)
            z2 = np.zeros((N, 2), np.float32)
            z1[:, 0], z2[:, 0] = x1, x2
            z2[:, 1] = 1.0 + rng.random(N)
            store.add(z1[None], z2[None], [(H, W)], [(H, W)], [f"s{n}"])
    sw = mv.slot_swap(ab.finalize(), ba.finalize())
    assert abs(sw["slot_specificity"][0]) < 1e-9 and sw["content_following"][0] > 0.999
    assert sw["slot_specificity"][1] == -1.0  # all mass in slot 2
    asym = mv.view_asymmetry(ab, n_boot=50)
    lab = mv.classify(None, asym, sw)
    assert lab[1] == "branch-2"  # fires in view 2 only because it follows the slot
    assert mv.classify(None, asym)[1] == "view-2"  # without the control it is only 'view-2'


def test_stats_threshold_and_summary():
    pa, corrs = planted(n_pairs=8)
    st = mv.latent_stats(pa)
    assert st["frequency"][3] == 0 and st["frequency"][5] > 0.99
    assert st["positional"][4] > st["positional"][1]  # fixed-position latent is positional
    tau = mv.dust_threshold(pa, frac=1.0, q=0.5)
    col5 = np.concatenate([pa.z1[:, 5].toarray(), pa.z2[:, 5].toarray()])
    np.testing.assert_allclose(tau[5], np.median(col5), rtol=0.05)
    assert tau[3] == 0
    cons = mv.consistency(pa, corrs, n_perm=10, min_support=5, tau=tau)
    summ = mv.layer_summary(cons, mv.view_asymmetry(pa, n_boot=10), st)
    assert summ["n_alive"] == 5 and summ["n_pairs"] == 8 and 0 <= summ["frac_significant_of_alive"] <= 1


def test_no_matches_gives_undefined_not_an_error():
    pa, corrs = planted(n_pairs=3)
    cons = mv.consistency(pa, [np.full(N, -1)] * 3, n_perm=5)
    assert cons["n_matched"] == 0 and not cons["tested"].any() and np.isnan(cons["jaccard"]).all()
    summ = mv.layer_summary(cons, mv.view_asymmetry(pa, n_boot=5), mv.latent_stats(pa))
    assert summ["n_tested"] == 0 and summ["n_significant"] == 0


def test_fdr_finds_planted_latents_among_many_noise_latents():
    # 10 consistent latents among 400 random ones: BH needs p below the 1/(n_perm+1) floor (normal tail)
    rng = np.random.default_rng(3)
    corr, n_lat, n_cons = _shift_corr(), 410, 10
    pa, corrs = mv.PairActivations(), []
    for n in range(20):
        z1 = np.where(rng.random((N, n_lat)) < 0.3, rng.random((N, n_lat)), 0).astype(np.float32)
        z2 = np.where(rng.random((N, n_lat)) < 0.3, rng.random((N, n_lat)), 0).astype(np.float32)
        ok = corr >= 0
        z2[corr[ok], :n_cons] = z1[ok, :n_cons]  # planted: view 2 copies view 1 at the matches
        pa.add(z1[None], z2[None], [(H, W)], [(H, W)], [f"s{n}"])
        corrs.append(corr)
    cons = mv.consistency(pa.finalize(), corrs, n_perm=50, min_support=20)
    assert cons["significant"][:n_cons].all()
    assert cons["significant"][n_cons:].sum() <= 2  # FDR 5 % of 10 discoveries, in expectation < 1
