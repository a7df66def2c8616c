"""Multi-view metrics of SAE latents on DUSt3R view pairs: the activation store, asymmetry, controls, labels.

Definitions (README, "How to read the metrics"): cross-view consistency with its nulls and calibrated tests is
in analysis/consistency.py (re-exported here); view asymmetry, and the slot-swap and identical-image controls
that separate content from branch. Everything is vectorised over latents: the codes are stored as scipy CSR
matrices (TopK codes are ~99.8 % zeros) and every per-latent number is a column sum, so thousands of latents
and hundreds of pairs cost seconds on a CPU.

Letters: P pairs, N tokens of one view (row-major over its h×w patch grid, token n at y = n // w,
x = n % w), S SAE latents, T tokens of one slot pooled over pairs, M matched view-1 tokens pooled.

Usage:
    pa = PairActivations(); pa.add(z1, z2, grid1, grid2, scenes)   # per batch, z: (B, N, S)
    pa.finalize()
    cons = consistency(pa, corrs, appearance)   # analysis/consistency.py; corrs: (N1,) int arrays, -1 = unmatched
    asym = view_asymmetry(pa)
"""
import numpy as np
import scipy.sparse as sp
import torch

from analysis.consistency import FDR_ALPHA, MIN_SUPPORT, consistency  # noqa: F401  (the consistency test lives there)
from analysis.permutation import benjamini_hochberg  # noqa: F401

# --------------------------------------------------------------------------------------------
ASYM_THRESHOLD = 0.5  # |VA| above which a latent is called view-asymmetric (a 3:1 mass ratio)
N_BOOT = 200  # bootstrap resamples over pairs for the VA confidence interval
# --------------------------------------------------------------------------------------------


class PairActivations:
    """Sparse non-negative SAE codes of P view pairs at one hook point.

    z1 / z2: CSR (T1, S) / (T2, S), rows = tokens, pair-major; start1 / start2: (P+1,) row offsets;
    grid1 / grid2: (P, 2) int (h, w) real-orientation patch grids; scene: P scene labels.
    """

    def __init__(self):
        self._z1, self._z2, self._g1, self._g2, self.scene = [], [], [], [], []

    def add(self, z1, z2, grid1, grid2, scenes):
        """Append a batch: z1 (B, N1, S), z2 (B, N2, S) tensors/arrays, grids (B, 2), scenes list[str]."""
        for z, store in ((z1, self._z1), (z2, self._z2)):
            z = torch.as_tensor(z).detach().float().cpu()
            B, N, S = z.shape
            # weighted Jaccard needs a >= 0; SAE codes are ReLU/TopK outputs, so this is a no-op there
            flat = z.clamp_min(0).reshape(B * N, S)  # (B*N, S)
            r, c = flat.nonzero(as_tuple=True)  # row-major order = CSR order; one pass per batch
            indptr = np.concatenate([[0], np.cumsum(np.bincount(r.numpy(), minlength=B * N))])
            m = sp.csr_matrix((flat[r, c].numpy(), c.numpy(), indptr), shape=(B * N, S))
            store.extend(m[b * N:(b + 1) * N] for b in range(B))
        for b in range(len(scenes)):
            self._g1.append(np.asarray(grid1[b]).reshape(2))
            self._g2.append(np.asarray(grid2[b]).reshape(2))
            self.scene.append(str(scenes[b]))

    def finalize(self):
        """Stack the per-pair matrices; call once after the last add()."""
        self.grid1, self.grid2 = np.stack(self._g1).astype(int), np.stack(self._g2).astype(int)
        for z, g in ((self._z1, self.grid1), (self._z2, self.grid2)):
            bad = [i for i, (m, hw) in enumerate(zip(z, g)) if m.shape[0] != hw[0] * hw[1]]
            if bad:
                raise ValueError(f"pair {bad[0]}: {z[bad[0]].shape[0]} tokens but grid {g[bad[0]]}")
        self.start1 = np.concatenate([[0], np.cumsum([m.shape[0] for m in self._z1])])
        self.start2 = np.concatenate([[0], np.cumsum([m.shape[0] for m in self._z2])])
        self.z1, self.z2 = sp.vstack(self._z1).tocsr(), sp.vstack(self._z2).tocsr()
        self.z1.sort_indices(), self.z2.sort_indices()
        self._z1, self._z2 = None, None
        return self

    @property
    def n_pairs(self):
        return len(self.scene)

    @property
    def n_latents(self):
        return self.z1.shape[1]

    def pair_maps(self, n, k):
        """Dense activation maps of latent k in pair n: ((h1, w1), (h2, w2)) float arrays."""
        a1 = self.z1[self.start1[n]:self.start1[n + 1], k].toarray().ravel()
        a2 = self.z2[self.start2[n]:self.start2[n + 1], k].toarray().ravel()
        return a1.reshape(self.grid1[n]), a2.reshape(self.grid2[n])


def _colsum(x):
    return np.asarray(x.sum(axis=0), dtype=np.float64).ravel()


def _pair_mass(z, start):
    """Per-pair activation mass of every latent: (P, S) float64 from CSR (T, S)."""
    counts = np.diff(start)
    pair_of_row = np.repeat(np.arange(len(counts)), counts)
    g = sp.csr_matrix((np.ones(len(pair_of_row)), (pair_of_row, np.arange(len(pair_of_row)))),
                      shape=(len(counts), z.shape[0]))
    return (g @ z.astype(np.float64)).toarray()


def view_asymmetry(pa, n_boot=N_BOOT, seed=0):
    """Per-latent view asymmetry VA = (M1 - M2) / (M1 + M2) over all tokens, with a bootstrap CI
    over pairs, and exclusivity E = share of the pairs it fires in where it fires in one view only.
    """
    m1, m2 = _pair_mass(pa.z1, pa.start1), _pair_mass(pa.z2, pa.start2)  # (P, S)
    with np.errstate(invalid="ignore", divide="ignore"):
        va = (m1.sum(0) - m2.sum(0)) / (m1.sum(0) + m2.sum(0))
        fire1, fire2 = m1 > 0, m2 > 0
        excl = (fire1 ^ fire2).sum(0) / (fire1 | fire2).sum(0)
        rng = np.random.default_rng(seed)
        w = np.stack([np.bincount(rng.integers(0, pa.n_pairs, pa.n_pairs), minlength=pa.n_pairs)
                      for _ in range(n_boot)]).astype(np.float64)  # (n_boot, P) resample counts
        b1, b2 = w @ m1, w @ m2
        vab = np.nan_to_num((b1 - b2) / (b1 + b2))  # a resample without firing counts as 0
        lo, hi = np.quantile(vab, [0.025, 0.975], axis=0) if n_boot else (va, va)
        lo, hi = np.where(np.isnan(va), np.nan, lo), np.where(np.isnan(va), np.nan, hi)
    return dict(va=va, va_lo=lo, va_hi=hi, exclusivity=excl, mass1=m1.sum(0), mass2=m2.sum(0))


def slot_swap(pa_ab, pa_ba):
    """Slot-swap control (README, How to read the metrics): pairs run as (A, B) and as (B, A). Per latent:
    slot_specificity S = (sum_X s(X|1) - sum_X s(X|2)) / sum_X (s(X|1) + s(X|2)) (signed; |S| high
    -> tracks the branch/slot), content_following F = corr over images X of (s(X|1), s(X|2))
    (high -> tracks image content). s(X|v) = mass of the latent on image X's tokens in slot v.
    """
    s1 = np.concatenate([_pair_mass(pa_ab.z1, pa_ab.start1), _pair_mass(pa_ba.z1, pa_ba.start1)])
    s2 = np.concatenate([_pair_mass(pa_ba.z2, pa_ba.start2), _pair_mass(pa_ab.z2, pa_ab.start2)])
    with np.errstate(invalid="ignore", divide="ignore"):
        spec = (s1.sum(0) - s2.sum(0)) / (s1.sum(0) + s2.sum(0))
        c1, c2 = s1 - s1.mean(0), s2 - s2.mean(0)
        f = (c1 * c2).sum(0) / np.sqrt((c1 ** 2).sum(0) * (c2 ** 2).sum(0))
    return dict(slot_specificity=spec, content_following=f)


def latent_stats(pa):
    """Frequency (share of tokens, both views pooled, where a latent fires), mean activation when
    firing, and positional concentration: KL(mean map over grid positions || uniform) / log N
    in [0, 1] (1 = always the same patch), NaN when the pairs' grids differ."""
    z = sp.vstack([pa.z1, pa.z2]).tocsr()
    count, mass = _colsum(z > 0), _colsum(z)
    with np.errstate(invalid="ignore", divide="ignore"):
        freq, mean_act = count / z.shape[0], mass / count
    grids = np.concatenate([pa.grid1, pa.grid2])
    positional = np.full(pa.n_latents, np.nan)
    n = int(grids[0].prod())
    if (grids == grids[0]).all() and n > 1:
        tok = np.tile(np.arange(n), z.shape[0] // n)  # grid position of every row
        g = sp.csr_matrix((np.ones(len(tok)), (tok, np.arange(len(tok)))), shape=(n, z.shape[0]))
        pm = (g @ z.astype(np.float64)).toarray()  # (N, S) mass by grid position
        pr = pm / np.maximum(pm.sum(0), 1e-300)
        ent = -(pr * np.log(np.where(pr > 0, pr, 1.0))).sum(0)  # 0 log 0 = 0
        positional = np.where(mass > 0, 1 - ent / np.log(n), np.nan)
    return dict(frequency=freq, mean_activation=np.where(count > 0, mean_act, 0.0), positional=positional)


def dust_threshold(pa, frac=0.1, q=0.999):
    """Per-latent firing threshold tau_k = frac * quantile_q(a_k) over all tokens (for
    ReLU+L1 SAEs whose codes carry small 'dust'); vectorised over the CSC columns."""
    z = sp.vstack([pa.z1, pa.z2]).tocsc()
    z.sort_indices()
    t = z.shape[0]
    nnz = np.diff(z.indptr)
    col = np.repeat(np.arange(z.shape[1]), nnz)
    data = z.data[np.lexsort((z.data, col))]  # values sorted within each column
    if len(data) == 0:
        return np.zeros(z.shape[1])
    rank = q * (t - 1) - (t - nnz)  # position of the quantile among the column's non-zeros (lower)
    idx = z.indptr[:-1] + np.clip(np.floor(rank).astype(int), 0, np.maximum(nnz - 1, 0))
    quant = np.where(rank >= 0, data[np.minimum(idx, len(data) - 1)], 0.0)  # rank < 0: a zero
    return frac * quant


def classify(cons, asym, swap=None, threshold=ASYM_THRESHOLD):
    """One label per latent: 'dead'; 'consistent' (analysis/consistency.py: beats every null, gain >= MIN_GAIN);
    'view-1' / 'view-2'
    (|VA| >= threshold and the bootstrap CI excludes 0), refined to 'branch-1' / 'branch-2' when the
    slot-swap control shows the same-sign slot specificity |S| >= threshold (it follows the slot,
    not the image); else 'neither'. VA labels are descriptive: no multiple-comparison correction."""
    lab = np.full(len(asym["va"]), "neither", dtype=object)
    lab[(asym["va"] >= threshold) & (asym["va_lo"] > 0)] = "view-1"
    lab[(asym["va"] <= -threshold) & (asym["va_hi"] < 0)] = "view-2"
    if swap is not None:
        spec = np.nan_to_num(swap["slot_specificity"])
        lab[(lab == "view-1") & (spec >= threshold)] = "branch-1"
        lab[(lab == "view-2") & (spec <= -threshold)] = "branch-2"
    if cons is not None:
        lab[cons["consistent"]] = "consistent"
    lab[(asym["mass1"] + asym["mass2"]) == 0] = "dead"
    return lab


def layer_summary(cons, asym, stats, swap=None, asym_aa=None):
    """Scalars for one hook point: counts, fractions, activation-mass-weighted means (weights: each
    latent's total activation mass, so that rare latents do not dominate)."""
    w = asym["mass1"] + asym["mass2"]
    alive = w > 0
    nan = float("nan")

    def wmean(v, mask):
        ok = mask & np.isfinite(v)
        return float((v[ok] * w[ok]).sum() / w[ok].sum()) if w[ok].sum() > 0 else nan

    def frac(v):
        return float(v[alive].mean()) if alive.any() else nan

    out = dict(n_latents=int(len(w)), n_alive=int(alive.sum()),
               mass_weighted_abs_va=wmean(np.abs(asym["va"]), alive),
               frac_asymmetric=frac(np.abs(np.nan_to_num(asym["va"])) >= ASYM_THRESHOLD),
               median_frequency=float(np.median(stats["frequency"][alive])) if alive.any() else nan,
               frac_positional_gt_0p5=frac(np.nan_to_num(stats["positional"]) > 0.5))
    if cons is not None:  # the power-free effect with its CI: analysis/instrument.py (layer_fields)
        t, con = cons["tested"], cons["consistent"]
        out.update(n_pairs=int(cons["n_pairs"]), n_matched=int(cons["n_matched"]), n_tested=int(t.sum()),
                   n_significant=int(cons["significant"].sum()), n_consistent=int(con.sum()),
                   frac_consistent_of_alive_power_dependent=float(con.sum() / max(alive.sum(), 1)),
                   median_jaccard=float(np.nanmedian(cons["jaccard"][t])) if t.any() else nan,
                   median_null_max=float(np.nanmedian(cons["null_max"][t])) if t.any() else nan)
    if swap is not None:
        out.update(mass_weighted_abs_slot_specificity=wmean(np.abs(swap["slot_specificity"]), alive),
                   mass_weighted_content_following=wmean(swap["content_following"], alive))
    if asym_aa is not None:
        out.update(mass_weighted_abs_va_identical_pair=wmean(np.abs(asym_aa["va"]), alive))
    return out
