"""Cross-view consistency of SAE latents against five nulls, with calibrated tests and effect sizes.

For every latent k and matched patch p -> m(p): weighted Jaccard C = sum min(a1(p), a2(m(p))) / sum max(...).
Nulls replace m(p) by another view-2 patch and compute the same C on the same view-1 patches:
  appearance  the patch of the same view-2 image >= 3 patches from m(p) whose raw-pixel appearance is closest
              to p's (analysis/appearance.py): what a code of appearance alone would also agree with;
  position    the patch at p's own grid position (positional latents, small baselines);
  shift       m(p) moved by one random >= 3-patch shift per pair (keeps spatial autocorrelation);
  shuffle     m permuted within the pair's matched targets (level: mean over n_shuffle draws; test: draw 1);
  scene       the same mapping into view 2 of a pair from another scene (content-free co-firing).
Per null j: gain_j = (C - C_j) / (1 - C_j), both on the matches where null j is defined. The latent's gain is
the smallest gain_j (the strongest null). Tests (analysis/permutation.py): a block-level sign-flip test per null,
p = max over nulls, q = Benjamini-Hochberg over tested latents. A latent is CONSISTENT when it is tested
(>= min_support firing matched patches in each view), q <= alpha AND gain >= MIN_GAIN.

Why MIN_GAIN = 0.2: significance alone measures power (more pairs, larger k: more latents pass with tiny
gains). Requiring the latent to close at least a fifth of the gap between its strongest null and perfect
agreement keeps "consistent" an effect-size statement. The value is set by the built-in controls, the only
codes whose answer is known: on 24 built-in pairs at 224 px (tests/test_controls.py), on appearance-ambiguous
matches (analysis/instrument.py), the per-latent gains of the raw-pixel code have their 99th percentile at 0.17
and those of the world-point code their 5th percentile at 0.40; 0.2 lies between.

Power-free layer numbers (`layer_effect`): the activation-mass-weighted gain over the strongest null with a
bootstrap 95 % CI over pairs (pairs resampled with replacement; every per-pair sum is additive, so a resample
is one matrix product). Compare layers only at the same SAE k and min_support.

Letters: P pairs, M matches (view-1 patches with a match), S latents.
"""
import numpy as np
import scipy.sparse as sp

from analysis.permutation import N_MAX, benjamini_hochberg, jaccard, sign_flip_pvalues

NULLS = ("appearance", "position", "shift", "shuffle", "scene")
MIN_SUPPORT = 50  # firing matched patches needed in EACH view before a latent is tested
MIN_GAIN = 0.2  # minimum gain over the strongest null for "consistent" (module docstring)
FDR_ALPHA = 0.05  # Benjamini-Hochberg level across tested latents
N_SHUFFLE = 50  # within-pair permutations averaged for the shuffle null's level
N_BOOT = 200  # bootstrap resamples over pairs for the layer effect size
MIN_SHIFT = 3  # patches; the shift null moves m(p) by >= this (Chebyshev, on a torus)
BLOCK = 4  # swap units of the sign-flip tests: 4x4 view-1 patches of one pair (64 px at 224; permutation.py)


def _binarize(x, tau):
    """CSR of 1.0 where x > tau (tau: scalar or (S,) per-latent threshold)."""
    xb = x.copy()
    thr = tau if np.isscalar(tau) else np.asarray(tau)[xb.indices]
    xb.data = (xb.data > thr).astype(np.float64)
    xb.eliminate_zeros()
    return xb


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


def _unit_sum(unit, n_units, v):
    """(M, S) sparse rows -> (U, S) sparse float64 sums of the rows of each unit."""
    g = sp.csr_matrix((np.ones(len(unit)), (unit, np.arange(len(unit)))), shape=(n_units, len(unit)))
    return (g @ v).tocsr()


def units(pa, pair, p1, block=None):
    """Swap unit of every match: the b x b block of view-1 patches it falls in, per pair (permutation.py).
    Returns unit (M,) int, the pair of every unit (U,), U."""
    block = BLOCK if block is None else block
    w1 = pa.grid1[pair, 1]
    nb_x = -(-pa.grid1[:, 1] // block)  # blocks per row, per pair
    nb = -(-pa.grid1[:, 0] // block) * nb_x
    first = np.concatenate([[0], np.cumsum(nb)])
    unit = first[pair] + (p1 // w1) // block * nb_x[pair] + (p1 % w1) // block
    return unit, np.repeat(np.arange(pa.n_pairs), nb), int(first[-1])


def null_targets(pa, rows1, rows2, pair, p1, p2, appearance=None, seed=0, min_shift=MIN_SHIFT):
    """View-2 rows (M,) of every null, -1 where undefined; appearance: (M,) view-2 token per match or None."""
    rng = np.random.default_rng(seed)
    start2, g1, g2 = pa.start2, pa.grid1, pa.grid2
    h1, w1, h2, w2 = g1[pair, 0], g1[pair, 1], g2[pair, 0], g2[pair, 1]
    y1, x1 = p1 // w1, p1 % w1
    out = {"position": start2[pair] + (y1 * h2 // h1) * w2 + (x1 * w2 // w1)}  # scaled when grids differ
    shifts = []
    for g in g2:  # one random shift per pair, >= min_shift patches on the torus
        dy, dx = np.meshgrid(np.arange(g[0]), np.arange(g[1]), indexing="ij")
        dist = np.maximum(np.minimum(dy, g[0] - dy), np.minimum(dx, g[1] - dx))
        ok = np.argwhere(dist >= min(min_shift, dist.max()))
        shifts.append(ok[rng.integers(len(ok))])
    s = np.asarray(shifts)[pair]
    y2, x2 = p2 // w2, p2 % w2
    out["shift"] = start2[pair] + ((y2 + s[:, 0]) % h2) * w2 + (x2 + s[:, 1]) % w2
    out["shuffle"] = rows2[_shuffle_order(pair, rng)]
    scene = np.asarray(pa.scene)
    other = np.full(pa.n_pairs, -1)
    for n in range(pa.n_pairs):  # view 2 of the next pair (cyclically) from another scene with the same grid
        order = np.roll(np.arange(pa.n_pairs), -n - 1)
        cand = order[(scene[order] != scene[n]) & (g2[order] == g2[n]).all(1)]
        other[n] = cand[0] if len(cand) else -1
    out["scene"] = np.where(other[pair] >= 0, start2[np.maximum(other[pair], 0)] + p2, -1)
    if appearance is not None:
        a = np.asarray(appearance)
        out["appearance"] = np.where(a >= 0, start2[pair] + a, -1)
    return out


def _shuffle_order(pair, rng):
    """A permutation of match indices that only moves matches within their pair (rows are pair-grouped)."""
    return np.lexsort((rng.random(len(pair)), pair))


class UnitSums:
    """Per-unit sums (U, S) (sparse) of the true matches and of every null, for the given latent columns.

    For null j: a_true[j], mass_true[j] (sum min, sum x + sum y over the matches where j is defined, at m(p))
    and a_null[j], mass_null[j] (the same at the null's targets); a_null_test: the shuffle's first draw.
    """

    def __init__(self, pa, rows1, rows2, pair, p1, targets, cols, n_shuffle=N_SHUFFLE, seed=0, block=None):
        unit, self.unit_pair, U = units(pa, pair, p1, block)
        self.n_pairs = pa.n_pairs
        z1, z2 = pa.z1[:, cols].tocsr(), pa.z2[:, cols].tocsr()
        self.a_true, self.mass_true, self.a_null, self.mass_null = {}, {}, {}, {}
        base = {}
        for j, t in targets.items():
            ok = t >= 0
            key = ok.tobytes()
            if key not in base:  # the true sums on this match set (shared by nulls defined everywhere)
                x, y = z1[rows1[ok]].astype(np.float64), z2[rows2[ok]].astype(np.float64)
                base[key] = (_unit_sum(unit[ok], U, x.minimum(y)), _unit_sum(unit[ok], U, x + y), x, unit[ok])
            a, m, x, un = base[key]
            self.a_true[j], self.mass_true[j] = a, m
            y = z2[t[ok]].astype(np.float64)
            self.a_null[j], self.mass_null[j] = _unit_sum(un, U, x.minimum(y)), _unit_sum(un, U, x + y)
            if j == "shuffle":  # level: mean sum(min) over draws (sum(y) is permutation-invariant); test: draw 1
                self.a_null_test = self.a_null[j]
                rng, acc = np.random.default_rng([seed, 1]), self.a_null[j].copy()
                pr = pair[ok]
                for _ in range(n_shuffle - 1):
                    acc = acc + _unit_sum(un, U, x.minimum(y[_shuffle_order(pr, rng)]))
                self.a_null[j] = acc / max(n_shuffle, 1)

    def pair_weights(self, w):
        """Pair resample counts (B, P) -> unit weights (B, U)."""
        return w[:, self.unit_pair]

    def gains(self, w=None):
        """Per-null (C_true, C_null, gain), each (S,), or (B, S) for pair weights w (B, P); gain -inf where the
        null is perfect (C_null = 1, e.g. the position null of a positional latent or of (A, A) pairs)."""
        if w is None:
            red = lambda v: np.asarray(v.sum(0)).ravel()  # noqa: E731
        else:
            wu = self.pair_weights(w)
            red = lambda v: np.asarray((v.T @ wu.T).T)  # noqa: E731  (B, S)
        out = {}
        for j in self.a_true:
            ct = jaccard(red(self.a_true[j]), red(self.mass_true[j]))
            cn = jaccard(red(self.a_null[j]), red(self.mass_null[j]))
            with np.errstate(invalid="ignore", divide="ignore"):  # -inf marks a perfect null: it cannot be beaten
                g = np.where(1 - cn > 1e-9, (ct - cn) / (1 - cn), np.where(np.isnan(cn), np.nan, -np.inf))
            out[j] = (ct, cn, g)
        return out

    def mass(self, w=None):
        """Matched activation mass per latent (sum x + sum y at the true targets), (S,) or (B, S)."""
        m = self.mass_true[next(iter(self.mass_true))]
        return np.asarray(m.sum(0)).ravel() if w is None else np.asarray((m.T @ self.pair_weights(w).T).T)


def strongest(gains):
    """Per latent: the smallest gain over the defined nulls (the strongest null) and which null it is."""
    names = list(gains)
    g = np.stack([gains[j][2] for j in names])  # (J, ...)
    allnan = np.isnan(g).all(0)
    idx = np.where(allnan, 0, np.nanargmin(np.where(np.isnan(g), np.inf, g), axis=0))
    return np.where(allnan, np.nan, np.take_along_axis(g, idx[None], 0)[0]), np.asarray(names)[idx]


def _appearance_rows(appearance, corrs):
    """Per-pair appearance targets -> (M,) in match order (the order of _matches), or None."""
    if appearance is None:
        return None
    parts = [np.asarray(a).ravel()[np.asarray(c).ravel() >= 0] for a, c in zip(appearance, corrs)]
    return np.concatenate(parts) if parts else np.zeros(0, int)


def match_sums(pa, corrs, cols, appearance=None, nulls=NULLS, n_shuffle=N_SHUFFLE, seed=0, block=BLOCK):
    """UnitSums of latents `cols` on the matches `corrs` against `nulls` (appearance skipped when None)."""
    rows1, rows2, pair, p1, p2 = _matches(pa, corrs)
    if len(rows1) < 2 or len(cols) == 0:
        return None
    targets = null_targets(pa, rows1, rows2, pair, p1, p2, _appearance_rows(appearance, corrs), seed=seed)
    targets = {j: t for j, t in targets.items() if j in nulls}
    return UnitSums(pa, rows1, rows2, pair, p1, targets, cols, n_shuffle=n_shuffle, seed=seed, block=block)


def consistency(pa, corrs, appearance=None, min_support=MIN_SUPPORT, alpha=FDR_ALPHA, min_gain=MIN_GAIN,
                n_shuffle=N_SHUFFLE, n_max=N_MAX, tau=0.0, seed=0, nulls=NULLS, block=BLOCK):
    """Per-latent consistency against the nulls, calibrated p-values, q, gains, labels. See module docstring.

    pa: PairActivations (finalized); corrs: per pair (N1,) view-2 token or -1; appearance: per pair (N1,)
    appearance-matched view-2 token or -1 (analysis/appearance.py), None = that null is skipped (reported).
    Returns a dict of (S,) arrays and scalars; `sums` holds the UnitSums of the tested latents (for effects).
    """
    rows1, rows2, pair, p1, p2 = _matches(pa, corrs)
    S, M = pa.n_latents, len(rows1)
    nulls = [j for j in nulls if j != "appearance" or appearance is not None]
    nan = np.full(S, np.nan)
    out = dict(n_pairs=pa.n_pairs, n_matched=M, min_support=min_support, min_gain=min_gain, alpha=alpha,
               nulls=nulls)
    x, y = pa.z1[rows1].astype(np.float64), pa.z2[rows2].astype(np.float64)
    smin, sx, sy = (np.asarray(v.sum(0)).ravel() for v in (x.minimum(y), x, y))
    xb, yb = _binarize(x, tau), _binarize(y, tau)
    sup1, sup2 = (np.asarray(v.sum(0)).ravel() for v in (xb, yb))
    both = np.asarray(xb.multiply(yb).sum(0)).ravel()
    with np.errstate(invalid="ignore", divide="ignore"):
        transfer = 0.5 * (both / sup1 + both / sup2)  # P(fires in 2 | fires in 1), symmetrised
    tested = (sup1 >= min_support) & (sup2 >= min_support) if M >= 2 else np.zeros(S, bool)
    sxx, syy, sxy = (np.asarray(v.sum(0)).ravel() for v in (x.multiply(x), y.multiply(y), x.multiply(y)))
    with np.errstate(invalid="ignore", divide="ignore"):
        cov, vx, vy = sxy - sx * sy / max(M, 1), sxx - sx ** 2 / max(M, 1), syy - sy ** 2 / max(M, 1)
        pearson = np.where((vx > 0) & (vy > 0), cov / np.sqrt(vx * vy), np.nan)
    out.update(jaccard=jaccard(smin, sx + sy), pearson=pearson, transfer=transfer, support1=sup1, support2=sup2,
               tested=tested)
    cols = np.nonzero(tested)[0]
    keys = [f"{k}_{j}" for k in ("null", "gain", "p") for j in NULLS] + ["gain", "null_max", "p", "q"]
    out.update({k: nan.copy() for k in keys}, strongest_null=np.full(S, "", object), cols=cols)
    out["significant"], out["consistent"] = np.zeros(S, bool), np.zeros(S, bool)
    out["sums"] = sums = match_sums(pa, corrs, cols, appearance, nulls, n_shuffle, seed, block)
    if sums is None:
        return out
    g = sums.gains()
    pj = []
    for i, j in enumerate(sums.a_true):
        a_null = sums.a_null_test if j == "shuffle" else sums.a_null[j]
        pj.append(sign_flip_pvalues(sums.a_true[j], sums.mass_true[j], a_null, sums.mass_null[j], n_max=n_max,
                                    seed=seed + 1 + i)[0])
        out[f"null_{j}"][cols], out[f"gain_{j}"][cols], out[f"p_{j}"][cols] = g[j][1], g[j][2], pj[-1]
    out["gain"][cols], out["strongest_null"][cols] = strongest(g)
    for k in ["gain"] + [f"gain_{j}" for j in g]:  # gain against a perfect null: undefined
        out[k] = np.where(np.isneginf(out[k]), np.nan, out[k])
    out["null_max"][cols] = np.nanmax(np.stack([np.where(np.isnan(g[j][1]), -np.inf, g[j][1]) for j in g]), 0)
    p = np.stack(pj)  # intersection-union: beat every null
    out["p"][cols] = np.where(np.isnan(p).all(0), np.nan, np.nanmax(np.where(np.isnan(p), -np.inf, p), 0))
    out["q"] = benjamini_hochberg(out["p"])
    out["significant"] = tested & (np.nan_to_num(out["q"], nan=1.0) <= alpha)
    out["consistent"] = out["significant"] & (np.nan_to_num(out["gain"], nan=-1.0) >= min_gain)
    return out


def stratum_effects(pa, corrs, cols, appearance, values, edges, n_boot=N_BOOT, seed=0, **kw):
    """Layer effect (mass-weighted gain over the strongest null, bootstrap CI) of latents `cols` on the matches
    whose value (per pair (N1,) arrays, e.g. rotation, photometric difference, depth ratio) falls in each bin
    [edges[i], edges[i+1]). Returns a list of dicts: bin, n_pairs, n_matched, gain, lo, hi."""
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = [np.where((np.asarray(c) >= 0) & (np.asarray(v) >= lo) & (np.asarray(v) < hi), c, -1)
               for c, v in zip(corrs, values)]
        n = sum(int((s >= 0).sum()) for s in sel)
        eff = layer_effect(match_sums(pa, sel, cols, appearance, seed=seed, **kw), n_boot=n_boot, seed=seed)
        out.append(dict(bin=[float(lo), float(hi)], n_pairs=sum(int((s >= 0).any()) for s in sel), n_matched=n,
                        **eff))
    return out


def layer_effect(sums, n_boot=N_BOOT, seed=0, level=0.95):
    """Activation-mass-weighted gain over the strongest null of the latents in `sums`, with a bootstrap CI
    over pairs: dict(gain, lo, hi, n_boot, samples). Weights: each latent's matched activation mass (sum x + sum y).
    The resamples depend only on (seed, number of pairs): runs analysed on the same pairs with the same seed
    share them, so `excess` can pair them."""
    nan = dict(gain=float("nan"), lo=float("nan"), hi=float("nan"), n_boot=n_boot, samples=None)
    if sums is None:
        return nan

    def wmean(w):
        g, mass = strongest(sums.gains(w))[0], sums.mass(w)
        g = np.where(np.isneginf(g), 0.0, g)  # a latent fully explained by a perfect null gains nothing
        ok = np.isfinite(g)
        return np.where(ok, g * mass, 0).sum(-1) / np.maximum(np.where(ok, mass, 0).sum(-1), 1e-300)

    est = float(wmean(None))
    P, rng, boots = sums.n_pairs, np.random.default_rng(seed), []
    for lo in range(0, n_boot, 50):  # resample counts (B, P), 50 resamples at a time
        w = np.stack([np.bincount(rng.integers(0, P, P), minlength=P) for _ in range(min(50, n_boot - lo))])
        boots.append(wmean(w.astype(np.float64)))
    b = np.concatenate(boots) if boots else np.zeros(0)
    a = (1 - level) / 2
    lo, hi = np.quantile(b, [a, 1 - a]) if len(b) else (np.nan, np.nan)
    return dict(gain=est, lo=float(lo), hi=float(hi), n_boot=n_boot, samples=b) if np.isfinite(est) else nan


def excess(effect, anchor, level=0.95):
    """Effect minus the anchor's, with a paired bootstrap CI (both from layer_effect on the same pairs and seed)."""
    if effect["samples"] is None or anchor["samples"] is None or len(effect["samples"]) != len(anchor["samples"]):
        return dict(gain=float("nan"), lo=float("nan"), hi=float("nan"))
    d = np.asarray(effect["samples"]) - np.asarray(anchor["samples"])
    a = (1 - level) / 2
    lo, hi = np.quantile(d, [a, 1 - a])
    return dict(gain=effect["gain"] - anchor["gain"], lo=float(lo), hi=float(hi))
