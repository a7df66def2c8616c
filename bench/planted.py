"""Planted-dictionary token streams and the metrics that score an SAE against the planted atoms.

Planted draws tokens as sparse non-negative combinations of known unit atoms (with the options bench_recovery's
configs use: anisotropy, correlated atoms, Zipf frequencies, a mean offset, parent/child trees, high-norm outlier
tokens); recovery() and absorption() compare a learnt decoder with those atoms. Used by bench/bench_recovery.py
and tests/test_sae_recovery.py.
"""
import math

import torch
import torch.nn.functional as F


class Planted:
    """Tokens x = sum_i c_i a_i + noise + offset over a few active unit atoms a_i (A, D); c_i >= 0.

    aniso: atoms drawn with per-dimension std (j+1)^(-aniso/2) before normalising (a power-law spectrum);
    corr: atoms in groups of 8 share a parent direction with weight sqrt(corr) (pairwise cos ~ corr);
    zipf: feature frequencies p_i ~ (rank+1)^-zipf; offset: a fixed mean of norm offset * E||x - mean||;
    tree: each of the `atoms` parents gets `tree` child atoms (random directions), and an active parent brings
    one of its children with probability 1/2: a child never fires without its parent, the co-occurrence that
    makes TopK SAEs absorb the parent into child latents (Matryoshka's case). sample() keeps the last draw's
    parents, their on-mask and children (-1: none) in self.last for the absorption metric.
    outliers: this fraction of tokens gains outlier_scale x the mean token norm along one of outlier_dirs fixed
    unit directions (times 1 + 0.2 N(0, 1)); sample() keeps the last draw's outlier mask in self.last_out."""

    def __init__(self, d, atoms, active, mags, noise, aniso, offset, corr, zipf, seed=0, tree=0, outliers=0.0,
                 outlier_scale=0.0, outlier_dirs=1, **_):
        g = torch.Generator().manual_seed(seed)
        std = (torch.arange(d) + 1.0).pow(-aniso / 2)
        a = torch.randn(atoms, d, generator=g)
        if corr > 0:
            parents = torch.randn(atoms // 8 + 1, d, generator=g).repeat_interleave(8, 0)[:atoms]
            a = math.sqrt(corr) * parents + math.sqrt(1 - corr) * a
        a = a * std
        if tree:
            a = torch.cat([a, torch.randn(atoms * tree, d, generator=g) * std])   # parents, then their children
        self.atoms = a / a.norm(dim=1, keepdim=True)                       # (A, D)
        p = (torch.arange(atoms) + 1.0).pow(-zipf)
        self.probs = (p / p.sum())[torch.randperm(atoms, generator=g)]     # (A,)
        self.active, self.mags, self.noise, self.g, self.tree, self.n_parents = active, mags, noise, g, tree, atoms
        self.offset = torch.zeros(d)
        self.outliers = 0.0   # outliers come last: the draws before them (and so the other configs) do not change
        if offset > 0:
            spread = (self.sample(4096) - self.sample(4096).mean(0)).norm(dim=1).mean()
            direction = torch.randn(d, generator=g)
            self.offset = offset * spread * direction / direction.norm()
        if outliers > 0:
            dirs = torch.randn(outlier_dirs, d, generator=g)
            norm = self.sample(4096).norm(dim=1).mean()
            self.outlier_dirs = outlier_scale * norm * dirs / dirs.norm(dim=1, keepdim=True)   # (O, D)
            self.outliers = outliers

    def sample(self, n):
        lo, hi = self.active
        idx = torch.multinomial(self.probs.expand(n, -1), hi, replacement=False, generator=self.g)   # (n, hi)
        count = torch.randint(lo, hi + 1, (n, 1), generator=self.g)
        keep = (torch.arange(hi) < count).float()                                                   # (n, hi)
        c = self._magnitudes(n, hi)
        w = c * keep                                                                                # (n, hi)
        if self.tree:
            child = self.n_parents + idx * self.tree + torch.randint(self.tree, (n, hi), generator=self.g)
            child = torch.where((torch.rand(n, hi, generator=self.g) < 0.5) & (keep > 0), child, -1)  # (n, hi)
            self.last = (idx, keep > 0, child)
            idx = torch.cat([idx, child.clamp_min(0)], 1)                                           # (n, 2 hi)
            w = torch.cat([w, self._magnitudes(n, hi) * (child >= 0)], 1)
        x = F.embedding_bag(idx, self.atoms, per_sample_weights=w, mode="sum")                      # (n, D)
        x = x + self.noise * torch.randn(x.shape, generator=self.g) + self.offset
        if self.outliers > 0:
            self.last_out = torch.rand(n, generator=self.g) < self.outliers                      # (n,)
            j = torch.randint(len(self.outlier_dirs), (n,), generator=self.g)
            size = 1 + 0.2 * torch.randn(n, 1, generator=self.g)
            x = x + self.last_out[:, None] * size * self.outlier_dirs[j]
        return x

    def _magnitudes(self, n, m):
        if self.mags == "exp":
            return torch.empty(n, m).exponential_(generator=self.g) + 0.5
        return torch.randn(n, m, generator=self.g).exp()          # heavy-tailed: log-normal, sigma 1


def absorption(last, fired, atoms, rows, n_parents, min_tokens=10, min_cos=0.9):
    """-> (mean over found parents of 1 - P(parent's latent fires | parent with a child) / P(fires | parent
    alone), number of found parents). 0 = the parent's latent keeps firing when a child is present, 1 = child
    latents absorbed it (Chanin et al. 2024's feature absorption). A parent's latent is the decoder row closest
    to it; only parents found (cos > min_cos) and seen at least min_tokens times either way count, so an SAE
    that never learnt the parents cannot score a low absorption."""
    idx, on, child = last                                                   # (n, hi) each
    cos = atoms[:n_parents] @ F.normalize(rows, dim=1).T                    # (P, S)
    best, latent = cos.max(1)                                               # (P,)
    fires = fired.gather(1, latent[idx])                                    # (n, hi): parent's latent fired
    scores = []
    for with_child in (True, False):
        sel = on & ((child >= 0) == with_child)
        hits = torch.zeros(n_parents).index_add_(0, idx[sel], fires[sel].float())
        seen = torch.zeros(n_parents).index_add_(0, idx[sel], torch.ones(int(sel.sum())))
        scores.append((hits, seen))
    (h1, n1), (h0, n0) = scores
    ok = (n1 >= min_tokens) & (n0 >= min_tokens) & (h0 > 0) & (best > min_cos)
    return (1 - (h1[ok] / n1[ok]) / (h0[ok] / n0[ok])).clamp_min(0).mean().item(), int(ok.sum())


def recovery(atoms, rows):
    """-> (mean best cosine of each true atom to a row, share with best cos > 0.9)."""
    best = torch.cat([(a @ F.normalize(rows, dim=1).T).max(1).values for a in atoms.split(1024)])
    return best.mean().item(), (best > 0.9).float().mean().item()


def duplicates(atoms, rows, alive, min_cos=0.9):
    """-> share of the atoms found at cos > min_cos by two or more live latents (`alive` (S,) bool: fired on the
    evaluation set). An L1 penalty does not see an atom split over two identical latents (f_1 + f_2 costs what f
    costs) while L0 counts both, so duplicates raise the L1 weight a given L0 needs."""
    live = F.normalize(rows[alive], dim=1)                                           # (S_live, D)
    hits = torch.cat([((a @ live.T) > min_cos).sum(1) for a in atoms.split(1024)])    # (A,)
    return (hits > 1).float().mean().item()
