"""Multi-view metrics of SAE latents on DUSt3R view pairs: consistency, null baselines, asymmetry.

Definitions (README, "How to read the metrics"): cross-view consistency with null baselines, view
asymmetry, and the slot-swap and identical-image controls that separate content from branch. Everything is vectorised over latents: the
codes are stored as scipy CSR matrices (TopK codes are ~99.8 % zeros) and every per-latent number
is a column sum, so thousands of latents and hundreds of pairs cost seconds on a CPU.

Letters: P pairs, N tokens of one view (row-major over its h×w patch grid, token n at y = n // w,
x = n % w), S SAE latents, T tokens of one slot pooled over pairs, M matched view-1 tokens pooled.

Usage:
    pa = PairActivations(); pa.add(z1, z2, grid1, grid2, scenes)   # per batch, z: (B, N, S)
    pa.finalize()
    cons = consistency(pa, corrs)        # corrs: list of (N1,) int arrays, -1 = unmatched
    asym = view_asymmetry(pa)
"""
import numpy as np
import scipy.sparse as sp
from scipy import special
import torch

# --------------------------------------------------------------------------------------------
MIN_SUPPORT = 50  # firing matched patches needed in EACH view before a latent is tested (README, How to read the metrics)
N_PERM = 200  # draws of the shuffled-correspondence null (>= 200: the smallest p is 1/201)
TAIL_MIN = 10  # fewer draws than this at or above the observed C: normal-tail p-value
FDR_ALPHA = 0.05  # Benjamini-Hochberg level across tested latents
MIN_SHIFT = 3  # patches; the shift null moves m(p) by >= this (Chebyshev, on a torus)
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


def _binarize(x, tau):
    """CSR of 1.0 where x > tau (tau: scalar or (S,) per-latent threshold)."""
    xb = x.copy()
    thr = tau if np.isscalar(tau) else np.asarray(tau)[xb.indices]
    xb.data = (xb.data > thr).astype(np.float64)
    xb.eliminate_zeros()
    return xb


def _agreement(x, y, base=None):
    """Per-latent weighted Jaccard and Pearson r between matched rows of x and y (CSR (M, S), >= 0).

    base: cached (sx, sxx) of x, since the permutation null only reorders the rows of y.
    """
    m = x.shape[0]
    sx, sxx = base if base is not None else (_colsum(x), _colsum(x.multiply(x)))
    sy, syy = _colsum(y), _colsum(y.multiply(y))
    smin, sxy = _colsum(x.minimum(y)), _colsum(x.multiply(y))
    with np.errstate(invalid="ignore", divide="ignore"):
        jac = smin / (sx + sy - smin)  # sum(max) = sum(x) + sum(y) - sum(min) for x, y >= 0
        cov, vx, vy = sxy - sx * sy / m, sxx - sx ** 2 / m, syy - sy ** 2 / m
        r = cov / np.sqrt(vx * vy)
    return jac, np.where((vx > 0) & (vy > 0), r, np.nan)


def _matches(pa, corrs):
    """Row indices of matched tokens: view-1 rows, view-2 rows, pair id, view-1 token, view-2 token."""
    if len(corrs) != pa.n_pairs:
        raise ValueError(f"{len(corrs)} correspondence arrays for {pa.n_pairs} pairs")
    out = [[], [], [], [], []]
    for n, c in enumerate(corrs):
        c = np.asarray(c).astype(np.int64).ravel()
        if len(c) != pa.start1[n + 1] - pa.start1[n]:
            raise ValueError(f"pair {n}: corr has {len(c)} entries, view 1 has "
                             f"{pa.start1[n + 1] - pa.start1[n]} tokens")
        p = np.nonzero(c >= 0)[0]
        for lst, v in zip(out, (pa.start1[n] + p, pa.start2[n] + c[p], np.full(len(p), n), p, c[p])):
            lst.append(v)
    return [np.concatenate(v) if v else np.zeros(0, int) for v in out]


def _null_rows(pa, pair, p1, p2, rng, min_shift):
    """View-2 rows under the deterministic nulls: same grid position, random shift, other scene."""
    h1, w1 = pa.grid1[pair].T
    h2, w2 = pa.grid2[pair].T
    y1, x1 = p1 // w1, p1 % w1
    # N2 same grid position; scaled when the two grids differ (different aspect ratios)
    pos = pa.start2[pair] + (y1 * h2 // h1) * w2 + (x1 * w2 // w1)
    # N3 one random 2-D shift per pair, >= min_shift patches on the torus (keeps autocorrelation)
    shifts = []
    for g in pa.grid2:
        dy, dx = np.meshgrid(np.arange(g[0]), np.arange(g[1]), indexing="ij")
        dist = np.maximum(np.minimum(dy, g[0] - dy), np.minimum(dx, g[1] - dx))
        ok = np.argwhere(dist >= min(min_shift, dist.max()))
        shifts.append(ok[rng.integers(len(ok))])
    shifts = np.asarray(shifts)[pair]
    y2, x2 = p2 // w2, p2 % w2
    shift = pa.start2[pair] + ((y2 + shifts[:, 0]) % h2) * w2 + (x2 + shifts[:, 1]) % w2
    # N4 other scene: view 2 of the next pair (cyclically) from a different scene with the same grid
    other = np.full(pa.n_pairs, -1)
    scene = np.asarray(pa.scene)
    for n in range(pa.n_pairs):
        order = np.roll(np.arange(pa.n_pairs), -n - 1)
        cand = order[(scene[order] != scene[n]) & (pa.grid2[order] == pa.grid2[n]).all(1)]
        other[n] = cand[0] if len(cand) else -1
    keep_scene = other[pair] >= 0
    scene_rows = pa.start2[np.maximum(other[pair], 0)] + p2
    return pos, shift, scene_rows, keep_scene


def consistency(pa, corrs, n_perm=N_PERM, min_support=MIN_SUPPORT, alpha=FDR_ALPHA, tau=0.0,
                seed=0, min_shift=MIN_SHIFT):
    """Per-latent cross-view consistency with null baselines, permutation p-values and BH q-values.

    Returns a dict of (S,) arrays: jaccard, pearson, transfer, support1, support2, tested,
    null_shuffle (mean over draws), null_shuffle_q95, null_position, null_shift, null_scene,
    null_max (strongest null), gain = (C - null_max) / (1 - null_max), p (permutation test of the
    shuffle null, normal tail where fewer than TAIL_MIN draws reach C), p_empirical, q, significant;
    and scalars n_pairs, n_matched, n_perm. tau: firing threshold (scalar or (S,)) for support
    and transfer; the Jaccard and Pearson numbers are threshold-free.
    """
    rows1, rows2, pair, p1, p2 = _matches(pa, corrs)
    S, M = pa.n_latents, len(rows1)
    if M < 2:  # nothing to correlate (e.g. predicted matches of a random model): all undefined
        nan, no = np.full(S, np.nan), np.zeros(S, bool)
        keys = ("jaccard pearson transfer support1 support2 null_shuffle null_shuffle_q95 null_position "
                "null_shift null_scene null_max gain p p_empirical q").split()
        return dict({k: nan.copy() for k in keys}, tested=no, significant=no.copy(), n_pairs=pa.n_pairs,
                    n_matched=M, n_perm=n_perm)
    rng = np.random.default_rng(seed)
    x, y = pa.z1[rows1].astype(np.float64), pa.z2[rows2].astype(np.float64)
    base = (_colsum(x), _colsum(x.multiply(x)))
    jac, r = _agreement(x, y, base)
    xb, yb = _binarize(x, tau), _binarize(y, tau)
    sup1, sup2, both = _colsum(xb), _colsum(yb), _colsum(xb.multiply(yb))
    with np.errstate(invalid="ignore", divide="ignore"):
        transfer = 0.5 * (both / sup1 + both / sup2)  # P(fires in 2 | fires in 1), symmetrised
    tested = (sup1 >= min_support) & (sup2 >= min_support)

    # N1: permute m(p) within each pair's co-visible targets; rows are grouped by pair already
    null_perm = np.empty((n_perm, S))
    for i in range(n_perm):
        order = np.lexsort((rng.random(M), pair))
        null_perm[i] = _agreement(x, y[order], base)[0]
    n_ge = (np.nan_to_num(null_perm, nan=-1.0) >= jac[None] - 1e-12).sum(0)
    p_emp = np.where(tested, (1 + n_ge) / (1 + n_perm), np.nan)
    # An empirical p never goes below 1/(n_perm+1), and BH over thousands of latents then passes
    # nothing unless ~10 % of them sit at that floor. Where fewer than TAIL_MIN draws reach the
    # observed C, use a normal approximation of the draws instead (Knijnenburg et al. 2009,
    # Bioinformatics 25:i161, fit a generalised Pareto tail; the null C is a ratio of sums over
    # >= min_support matches, close to normal by the CLT, so we keep the simpler normal tail).
    fin = np.isfinite(null_perm)
    cnt = np.maximum(fin.sum(0), 1)
    mu = np.where(fin, null_perm, 0).sum(0) / cnt
    sd = np.sqrt(np.where(fin, (null_perm - mu) ** 2, 0).sum(0) / np.maximum(cnt - 1, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        p_norm = 0.5 * special.erfc((jac - mu) / (sd * np.sqrt(2)))
    p = np.where((n_ge < TAIL_MIN) & (sd > 0) & np.isfinite(p_norm), p_norm, p_emp) if n_perm else p_emp
    p = np.where(tested, p, np.nan)
    q = benjamini_hochberg(p)

    pos, shift, scene_rows, keep = _null_rows(pa, pair, p1, p2, rng, min_shift)
    n_pos = _agreement(x, pa.z2[pos].astype(np.float64), base)[0]
    n_shift = _agreement(x, pa.z2[shift].astype(np.float64), base)[0]
    if keep.sum() >= 2:
        n_scene = _agreement(x[np.nonzero(keep)[0]], pa.z2[scene_rows[keep]].astype(np.float64))[0]
    else:  # one scene only: the cross-scene null is undefined
        n_scene = np.full(S, np.nan)
    # a latent silent on the matched set has NaN draws: mean / quantile stay NaN, without warnings
    n_shuffle = np.where(fin.any(0), mu, np.nan)
    q95 = np.full(S, -np.inf) if not n_perm else np.quantile(np.where(fin, null_perm, -np.inf), 0.95, axis=0,
                                                             method="higher")
    q95 = np.where(np.isfinite(q95), q95, np.nan)
    nulls = np.stack([n_shuffle, n_pos, n_shift, n_scene])
    null_max = np.where(np.isnan(nulls), -np.inf, nulls).max(0)
    null_max = np.where(np.isfinite(null_max), null_max, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        # undefined (NaN) when the strongest null is already perfect, e.g. (A, A) pairs vs N2
        gain = np.where(1 - null_max > 1e-9, (jac - null_max) / (1 - null_max), np.nan)
    significant = tested & (np.nan_to_num(q, nan=1.0) <= alpha) & (np.nan_to_num(gain) > 0)
    return dict(jaccard=jac, pearson=r, transfer=transfer, support1=sup1, support2=sup2,
                tested=tested, null_shuffle=n_shuffle, null_shuffle_q95=q95, null_position=n_pos,
                null_shift=n_shift, null_scene=n_scene, null_max=null_max, gain=gain, p=p, p_empirical=p_emp,
                q=q, significant=significant, n_pairs=pa.n_pairs, n_matched=M, n_perm=n_perm)


def benjamini_hochberg(p):
    """Benjamini-Hochberg adjusted p-values (q); NaN entries are ignored and stay NaN."""
    p = np.asarray(p, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    ok = np.nonzero(np.isfinite(p))[0]
    if len(ok) == 0:
        return q
    order = np.argsort(p[ok])
    ranked = p[ok][order] * len(ok) / np.arange(1, len(ok) + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]  # step-up: q_i = min_{j >= i} p_j m / j
    q[ok[order]] = np.minimum(ranked, 1.0)
    return q


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
    """One label per latent: 'dead'; 'consistent' (significant, positive gain); 'view-1' / 'view-2'
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
        lab[cons["significant"]] = "consistent"
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
    if cons is not None:
        t, sig = cons["tested"], cons["significant"]
        out.update(n_pairs=int(cons["n_pairs"]), n_matched=int(cons["n_matched"]), n_tested=int(t.sum()),
                   n_significant=int(sig.sum()), frac_significant_of_alive=float(sig.sum() / max(alive.sum(), 1)),
                   frac_significant_of_tested=float(sig.sum() / max(t.sum(), 1)),
                   mass_weighted_gain=wmean(cons["gain"], t),
                   median_jaccard=float(np.nanmedian(cons["jaccard"][t])) if t.any() else nan,
                   median_null_max=float(np.nanmedian(cons["null_max"][t])) if t.any() else nan)
    if swap is not None:
        out.update(mass_weighted_abs_slot_specificity=wmean(np.abs(swap["slot_specificity"]), alive),
                   mass_weighted_content_following=wmean(swap["content_following"], alive))
    if asym_aa is not None:
        out.update(mass_weighted_abs_va_identical_pair=wmean(np.abs(asym_aa["va"]), alive))
    return out
