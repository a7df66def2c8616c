"""Calibrated p-values: block-level sign-flip tests with Besag-Clifford sequential Monte Carlo stopping.

The test. A latent's consistency C = sum(min) / (sum(x) + sum(y) - sum(min)) over matched patches is compared
with the same number at a null's targets (appearance-matched patch, same position, shifted, shuffled, other
scene). Under H0 "the true target is no better than the null target", the true and null targets of a unit
are exchangeable, so swapping them in any subset of units leaves the distribution of T = C_true - C_null
unchanged. A unit is a block of b x b view-1 patches of one pair (analysis/consistency.py, BLOCK), not a single
patch: patches of one image are spatially correlated, and swapping single patches makes the null distribution
too narrow (anti-conservative); swapping whole pairs is safe but leaves a latent that fires in a few pairs with
a handful of units, so it can never reach a small p. Every per-unit sum is additive, so a swap pattern
F (D draws x U units, 0/1) acts as one (sparse) matrix product.

The p-value (Besag & Clifford 1991, "Sequential Monte Carlo p-values", Biometrika 78:301): draw swap patterns
until h of them reach the observed T, or n_max draws are done. Stopped at draw L with h exceedances,
p = h / L; otherwise p = (g + 1) / (n_max + 1) with g < h exceedances. Both are exact (P(p <= u) <= u), no tail
approximation: latents far from the decision stop after a few dozen draws, latents near it get up to n_max.
The smallest attainable p is 1 / (n_max + 1); with U units the swap group has 2^U patterns, so a latent
firing in few units cannot reach a small p whatever n_max is (a floor that is stated, not hidden).

Several nulls: a latent is significant only when it beats every null (intersection-union test: p = max over
nulls, valid at level alpha without a multiplicity correction across nulls; Berger 1982, Technometrics 24:295),
then Benjamini-Hochberg across latents.
"""
import numpy as np
import scipy.sparse as sp

H_STOP = 10  # Besag-Clifford: stop a latent's draws after this many exceedances
N_MAX = 10_000  # most draws per latent (smallest p = 1 / 10001)
BATCH = 256  # swap patterns drawn per round (per latent still running)


def jaccard(smin, smass):
    """Weighted Jaccard from sums: smin = sum(min(x, y)), smass = sum(x) + sum(y); NaN where nothing fires."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return smin / (smass - smin)


def _stat(a_t, m_t, a_n, m_n):
    return np.nan_to_num(jaccard(a_t, m_t), nan=0.0) - np.nan_to_num(jaccard(a_n, m_n), nan=0.0)


def sign_flip_pvalues(a_true, mass_true, a_null, mass_null, h=H_STOP, n_max=N_MAX, seed=0, batch=BATCH):
    """One-sided p-values of C_true > C_null per latent from per-unit sums (U, S) each (dense or scipy
    sparse): a = sum(min(x, y)) and mass = sum(x) + sum(y) over the unit's matches at the true / null
    targets; a unit is what one swap exchanges (a block of patches of one pair, module docstring).
    Returns p (S,) and the number of draws used per latent (S,)."""
    sums = [sp.csc_matrix(v, dtype=np.float64) for v in (a_true, mass_true, a_null, mass_null)]
    U, S = sums[0].shape
    da, dm = (sums[0] - sums[2]).tocsc(), (sums[1] - sums[3]).tocsc()  # what a swap moves from true to null
    tot = [np.asarray(v.sum(0)).ravel() for v in sums]
    t_obs = _stat(*tot)
    tol = 1e-12 * np.maximum(1.0, np.abs(t_obs))  # ties count as exceedances (conservative)
    rng = np.random.default_rng(seed)
    exceed, draws = np.zeros(S, np.int64), np.zeros(S, np.int64)
    stop_at = np.full(S, -1, np.int64)  # draw index of the h-th exceedance
    active = np.nonzero(np.isfinite(t_obs))[0]
    while len(active):
        d = int(min(batch, n_max - draws[active].max()))
        f = (rng.random((d, U)) < 0.5).astype(np.float64)  # (D, U) swap patterns
        fa, fm = (da[:, active].T @ f.T).T, (dm[:, active].T @ f.T).T  # (D, K)
        t = _stat(tot[0][active] - fa, tot[1][active] - fm, tot[2][active] + fa, tot[3][active] + fm)
        hit = t >= (t_obs - tol)[active]  # (D, K)
        csum = exceed[active] + np.cumsum(hit, 0)  # (D, K) running exceedance count
        reached = csum >= h
        first = np.where(reached.any(0), reached.argmax(0), -1)
        done_h = first >= 0
        stop_at[active[done_h]] = draws[active[done_h]] + first[done_h] + 1
        exceed[active] = np.where(done_h, h, csum[-1])
        draws[active] = np.where(done_h, stop_at[active], draws[active] + d)
        active = active[~done_h & (draws[active] < n_max)]
    p = np.where(stop_at > 0, h / np.maximum(stop_at, 1), (exceed + 1) / (n_max + 1))
    return np.where(np.isfinite(t_obs), p, np.nan), draws


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
