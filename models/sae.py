"""Sparse autoencoders (SAEs) on DUSt3R token activations, and the metrics used to judge them.

Legend: B tokens in a batch, D activation width (d_in), S latents (n_latents), K active latents/token.

One class, four kinds (no class hierarchy: each kind's inference code is one function in CODES, its
training path one branch of `forward`):
  topk        TopK + AuxK dead-latent loss (Gao et al. 2024, "Scaling and evaluating sparse autoencoders")
  batchtopk   top B*K activations over the whole batch (Bussmann et al. 2024); an EMA threshold
              (SAELens, lr 0.01) replaces the batch top-k at inference, i.e. a JumpReLU. Ranked by
              pre-activation / token norm by default (batch_rank 'norm'; 'raw' = the paper): raw ranking gives
              the largest tokens most of the batch's latents (bench/bench_recovery.py: 0.56 vs 0.94 recovery)
  matryoshka  BatchTopK whose nested prefixes W_dec[:m] (m in matryoshka_widths) must each reconstruct the
              input on their own (Bussmann et al. 2025, "Learning multi-level features with Matryoshka
              SAEs"): early latents learn coarse features, later ones refine them, against feature absorption
  relu        ReLU + L1 weighted by decoder row norms, L1 warmed up linearly, row norms free and starting small
              (Anthropic April-2024 update; `save` folds the norms into the codes, so a saved SAE has unit rows);
              encoder biases step RELU_BENC_LR_SCALE x the lr (`param_groups`)
Recipe (the consensus of openai/sparse_autoencoder, sparsify, saev, SAELens, dictionary_learning): b_dec
subtracted before the encoder, tied init W_enc = W_dec^T / sqrt(3) (ENC_INIT_NORM, sparsify's scale),
b_dec at the geometric median of a sample (openai), unit-norm decoder rows with the gradient parallel
to them removed (openai, sparsify, saev; not relu, above), inputs mean-centred and scaled so E||x|| = sqrt(D)
(SAELens, saev v0.1), folded into the weights by `save` so a saved SAE acts on raw activations.
"""
import dataclasses
import json
import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from safetensors.torch import load_file, save_file
from torch import nn


def _codes_topk(sae, pre, x_in):
    """pre (B, S) -> the K largest per token, ReLU'd; the rest 0."""
    vals, idx = pre.topk(sae.cfg.k, dim=1, sorted=False)
    return torch.zeros_like(pre).scatter_(1, idx, vals.relu())


def _codes_batchtopk(sae, pre, x_in):
    """pre (B, S) -> JumpReLU at the EMA threshold learnt in training (replaces the batch top-k);
    Matryoshka uses it too. batch_rank 'norm': the threshold scales with each token's norm."""
    return pre.relu() * (pre > sae.threshold * _rank_scale(sae, x_in))


def _codes_relu(sae, pre, x_in):
    return pre.relu()


def _rank_scale(sae, x_in):
    """(B, 1) per-token scale that batch top-k ranks pre-activations by: ||x_in|| / sqrt(D) for
    batch_rank 'norm', 1 for 'raw' (the papers' BatchTopK)."""
    if sae.cfg.batch_rank == "raw":
        return x_in.new_ones(())
    return x_in.norm(dim=1, keepdim=True).clamp_min(1e-6) / math.sqrt(x_in.shape[1])


# SAE kind -> its inference code function (pre-activations (B, S), encoder input (B, D) -> codes (B, S),
# normalised units)
CODES = {"topk": _codes_topk, "batchtopk": _codes_batchtopk, "matryoshka": _codes_batchtopk, "relu": _codes_relu}
KINDS = tuple(CODES)
# Encoder columns start as the decoder rows times this norm. Adam moves every weight by about lr per step
# whatever its scale, so the encoder's relative step is ~ lr * sqrt(D) / ||w_enc||: unit-norm columns made
# our encoder learn 1.7x slower than sparsify's (nn.Linear init, ||w|| ~ 1/sqrt(3)) at the same lr, the
# whole of the gap on the planted-dictionary benchmark (README, SAEs, "Recovery vs sparsify").
ENC_INIT_NORM = 1 / math.sqrt(3)
# relu: decoder rows start at this norm with the encoder tied to them, and their norms stay free (the L1 weighs
# each code by its row's norm, so the penalty grows as a latent's row does), as in Anthropic's April-2024 update
# and SAELens (whose rows start at 0.1 on inputs scaled as ours; 0.1 learnt slower on the planted toy config).
# Unit rows held at norm 1 (our recipe before) made the weighting a no-op and recovered 0.63 / 0.43 of the
# planted atoms instead of 0.99 (tiny / toy, lr 1e-2, L0 matched to k; README, SAEs, "ReLU+L1 at matched L0").
RELU_DEC_INIT_NORM = 0.05
# relu: the encoder biases step this many times the learning rate (`SAE.param_groups`, applied by
# training/step.py). ReLU+L1 thresholds with them, so they must travel out to the scale of the pre-activations,
# and Adam moves a bias by about lr per step while a weight column's D entries move a pre-activation by up to
# ~lr * sum_i |x_i| per step. At 1x ours learnt slower than dictionary_learning's trainer on raw activations (which
# are smaller than our normalised ones, so its biases travel less) and barely at all at lr 3e-3; at 8x it leads
# it in FVU and recovery at matched L0 on every planted config at lr 3e-3 and 1e-2 (README, SAEs, "ReLU+L1 at
# matched L0"; at 2e-2 to 4e-2 the two trade). Scaling b_dec too (i.e. smaller inputs) gained the same on the
# small configs but cost recovery on the ViT-like one; 32x left more latents dead.
RELU_BENC_LR_SCALE = 8.0


@dataclasses.dataclass
class SAEConfig:
    d_in: int                       # D, activation width (1024 DUSt3R encoder, 768 decoder)
    n_latents: int                  # S, dictionary size (16x d_in by default in the scripts)
    kind: str = "topk"              # 'topk' | 'batchtopk' | 'matryoshka' | 'relu' (ReLU + L1)
    k: int = 32                     # active latents per token (topk: exactly; (matryoshka) batchtopk: on average)
    aux_k: int = 512                # AuxK: dead latents used to model the residual (saev, BatchTopK ref)
    aux_coeff: float = 1 / 32       # AuxK weight (Gao et al.; openai, dictionary_learning, saev)
    dead_tokens: int = 10_000_000   # dead = no firing in this many tokens (openai, sparsify, saev)
    l1_coeff: float = 5e-3          # relu only; = SAELens' 5 with summed MSE at D=1024; tune for L0
    l1_warmup_steps: int = 1000     # relu only; linear L1 warm-up (dictionary_learning 2000, saev 500)
    threshold_lr: float = 0.01      # batchtopk, matryoshka: EMA rate of the inference threshold (SAELens)
    batch_rank: str = "norm"        # batchtopk, matryoshka: rank pre-activations as they are ('raw', the papers)
                                    # or divided by the token's norm ('norm'; README "Recovery vs sparsify":
                                    # raw ranking hands high-norm tokens most of the batch's K and learns slowly)
    token_weight: bool = False      # weight each token's squared error by D / ||x_n - b_dec||^2, i.e. fit its relative
                                    # error (the ratio SAELens' constant_norm_rescale fits); much faster recovery on
                                    # the planted dictionaries (README "A lead"), not yet measured on DUSt3R: opt-in
    matryoshka_widths: tuple = ()   # matryoshka: increasing prefix sizes ending at n_latents; () = S/16, S/8, .., S
                                    # (doubling, as SAELens' examples; dictionary_learning uses fixed fractions)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"SAEConfig.kind must be one of {KINDS}, got {self.kind!r}")
        if self.batch_rank not in ("norm", "raw"):
            raise ValueError(f"SAEConfig.batch_rank must be 'norm' or 'raw', got {self.batch_rank!r}")
        if not (0 < self.k <= self.n_latents and self.d_in > 0 and self.aux_k > 0 and self.dead_tokens > 0):
            raise ValueError(f"SAEConfig: need 0 < k <= n_latents, d_in, aux_k, dead_tokens > 0: {self}")
        if self.kind == "matryoshka":
            S = self.n_latents
            w = tuple(int(m) for m in self.matryoshka_widths) or tuple(
                sorted({max(1, S >> i) for i in range(5)}))               # S/16, S/8, S/4, S/2, S
            if any(b <= a for a, b in zip(w, w[1:])) or w[0] < 1 or w[-1] != S:
                raise ValueError(f"SAEConfig.matryoshka_widths must increase strictly from >= 1 to n_latents={S}, "
                                 f"got {list(self.matryoshka_widths)}")
            self.matryoshka_widths = w
        elif self.matryoshka_widths:
            raise ValueError(f"SAEConfig.matryoshka_widths is for kind 'matryoshka', not {self.kind!r}")


class SparseCodes(NamedTuple):
    """The batch's non-zero candidates of a (B, S) code matrix: flat index b*S + s and value (raw units)."""
    flat: torch.Tensor       # (N,) int64
    vals: torch.Tensor       # (N,) detached
    shape: tuple             # (B, S)


class SAEOutput(NamedTuple):
    recon: torch.Tensor      # (B, D) reconstruction in raw activation space
    codes: object            # latents in raw units, detached: SparseCodes (topk, batchtopk and matryoshka in
                             # training) or a dense (B, S) tensor; read them as .latents or .fired
    loss: torch.Tensor       # scalar to backprop: recon_mse (matryoshka: mean prefix MSE) + aux + l1 terms
    recon_mse: torch.Tensor  # mean squared error per element, normalised space
    aux_loss: torch.Tensor   # AuxK normalised MSE of the residual (0 when no latent is dead)
    l1: torch.Tensor         # mean over tokens of sum_i f_i ||W_dec,i||, normalised space (relu)
    l0: float                # mean non-zero latents per token
    fvu: float               # this batch's centred fraction of variance unexplained

    @property
    def latents(self) -> torch.Tensor:
        """(B, S) dense latents in raw units, built on reading: the training step never needs them, and at
        d = 1024, 16x, batch 4096 the fill and scatter of 268 MB was a fifth of a CPU step."""
        if isinstance(self.codes, torch.Tensor):
            return self.codes
        B, S = self.codes.shape
        dense = self.codes.vals.new_zeros(B * S).scatter_(0, self.codes.flat, self.codes.vals)
        return dense.view(B, S)

    @property
    def fired(self) -> torch.Tensor:
        """(S,) bool: latents non-zero on at least one token of the batch (the dead-latent counter's input)."""
        if isinstance(self.codes, torch.Tensor):
            return (self.codes != 0).any(0)
        B, S = self.codes.shape
        hit = self.codes.flat[self.codes.vals != 0] % S
        return torch.zeros(S, dtype=torch.bool, device=hit.device).index_fill_(0, hit, True)


class _TopKEncode(torch.autograd.Function):
    """relu(topk((x_n - b_dec) @ W_enc + b_enc)) with a sparse backward.

    Only K of the S pre-activations per token get a gradient, so no (B, S) tensor is kept or built
    in the backward: grad W_enc is a gather of the tokens that chose each latent (embedding_bag, B*K*D
    work instead of a B*S*D matmul; sparsify's fused encoder does the same). b_dec enters every token
    alike, so its gradient is -W_enc @ grad b_enc (D*S work), not a sum over a (B, D) grad x_in, which is
    built (a K-row gather per token) only when x_n itself needs a gradient. The sparse parts run in fp32
    even under autocast.
    """

    @staticmethod
    def forward(ctx, x_n, b_dec, W_enc, b_enc, k):
        x_in = x_n - b_dec                                 # (B, D)
        pre = torch.addmm(b_enc, x_in, W_enc)            # (B, S), bf16 under autocast
        vals, idx = pre.topk(k, dim=1, sorted=False)       # (B, K)
        vals = vals.relu()
        ctx.save_for_backward(x_in, W_enc, idx, vals)
        return vals, idx

    @staticmethod
    def backward(ctx, g_vals, _g_idx):
        x_in, W_enc, idx, vals = ctx.saved_tensors
        (B, K), S = idx.shape, W_enc.shape[1]
        g = (g_vals * (vals > 0)).to(W_enc.dtype)          # (B, K), relu after top-k
        flat = idx.flatten()                               # (B*K,) latent of each entry
        order = flat.argsort()                             # group entries by latent
        offsets = F.pad(torch.bincount(flat, minlength=S).cumsum(0)[:-1], (1, 0))   # (S,)
        tokens = torch.arange(B, device=idx.device).repeat_interleave(K)[order]
        grad_W = F.embedding_bag(tokens, x_in.to(W_enc.dtype), offsets, mode="sum",
                                 per_sample_weights=g.flatten()[order])           # (S, D)
        grad_b = torch.zeros(S, dtype=W_enc.dtype, device=g.device).index_add_(0, flat, g.flatten())
        grad_x = grad_b_dec = None
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(idx, W_enc.t().contiguous(), per_sample_weights=g,
                                     mode="sum").to(x_in.dtype)                    # (B, D)
        if ctx.needs_input_grad[1]:
            grad_b_dec = -(W_enc @ grad_b)                                         # (D,)
        # W_enc is stored latent-major (strides (1, D): the tied init transposes W_dec), so grad_W.t() already has
        # its layout; a .contiguous() here cost two 4*D*S-byte transposing copies per step (this one, then
        # autograd's copy back into the parameter's layout)
        return grad_x, grad_b_dec, grad_W.t(), grad_b, None


def save_atomic(path, write):
    """write(tmp_path), then give the file the usual mode (0644 under umask 022; safetensors writes 0600) and
    rename it over `path`: an interrupted save leaves the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
    return path


class SAE(nn.Module):
    """Sparse autoencoder; parameters live in normalised space, inputs and outputs are raw.

        x_n   = s (x - mu)                     mu (D,), s = sqrt(D) / E||x - mu||  (buffers)
        pre   = (x_n - b_dec) W_enc + b_enc    W_enc (D, S), b_enc (S,)
        f     = relu(topk_K(pre))  |  batch top-(B*K) of relu(pre) / r, relu(pre) * [pre > theta r] at
                inference, r = ||x_n - b_dec|| / sqrt(D) (batch_rank 'norm') or 1 ('raw')  |  relu(pre)
        x_n^  = f W_dec + b_dec                W_dec (S, D) unit-norm rows, b_dec (D,)
        x^    = x_n^ / s + mu
    Public latents z = f / s are in raw units, so x^ = z W_dec + (mu + b_dec / s) whether or not the
    normalisation has been folded in (save); then mu = 0, s = 1 and the biases absorb it.
    Loss (normalised space):
        recon_mse = mean_{B,D} (x_n^ - x_n)^2
        aux_loss  = ||e - e^||^2 / ||e - mean_B(e)||^2,  e = x_n - x_n^ (detached),
                    e^ = relu(topk_{aux_k}(pre over dead latents)) W_dec   (no b_dec: sparsify PR #134)
        l1        = mean_B sum_S f_i ||W_dec,i||
        loss      = recon_mse + aux_coeff aux_loss + l1_coeff min(1, step / l1_warmup_steps) l1
    Matryoshka replaces recon_mse in the loss by the mean over its G prefixes m of
        mean_{B,D} (f[:, :m] W_dec[:m] + b_dec - x_n)^2     (recon_mse stays the full dictionary's)
    """

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        D, S = cfg.d_in, cfg.n_latents
        W_dec = torch.empty(S, D)
        nn.init.kaiming_uniform_(W_dec, a=math.sqrt(5))
        self.free_decoder = cfg.kind == "relu"   # row norms free (relu) or held at 1 (the others)
        row = RELU_DEC_INIT_NORM if self.free_decoder else 1.0
        self.W_dec = nn.Parameter(W_dec / W_dec.norm(dim=1, keepdim=True) * row)
        self.W_enc = nn.Parameter(self._tied_encoder())   # tied init (Gao et al. 2024)
        self.b_enc = nn.Parameter(torch.zeros(S))
        self.b_dec = nn.Parameter(torch.zeros(D))
        self.register_buffer("norm_mean", torch.zeros(D))
        self.register_buffer("norm_scale", torch.ones(()))
        self.register_buffer("threshold", torch.zeros(()))             # batchtopk inference, normalised units
        self.register_buffer("tokens_since_fired", torch.zeros(S, dtype=torch.int64))
        self.register_buffer("n_steps", torch.zeros((), dtype=torch.int64))  # training forwards seen
        self.topk_impl = "fused"   # 'fused' (_TopKEncode + embedding_bag decode) | 'dense' (reference)

    # ----- set-up and constraints -----
    def param_groups(self):
        """Optimizer parameter groups: one, or for relu the encoder biases in their own with lr_scale
        RELU_BENC_LR_SCALE (training/step.py's sae_step sets each group's lr to lr * lr_scale)."""
        if self.cfg.kind != "relu":
            return [{"params": list(self.parameters())}]
        rest = [p for n, p in self.named_parameters() if n != "b_enc"]
        return [{"params": rest}, {"params": [self.b_enc], "lr_scale": RELU_BENC_LR_SCALE}]

    @torch.no_grad()
    def init_from_sample(self, x: torch.Tensor, median_tokens: int = 32768, iters: int = 100):
        """x (T, D) raw: set mu and s (E||x - mu|| = sqrt(D)) from all T tokens (anchors: ~500k), b_dec
        to the geometric median of the first `median_tokens` (openai: 32,768), and re-tie W_enc."""
        x = x.reshape(-1, self.cfg.d_in)
        chunks = x.split(65536)                            # float64 sums without a float64 copy of x
        mu = sum(c.double().sum(0) for c in chunks) / len(x)
        s = math.sqrt(self.cfg.d_in) * len(x) / sum((c.double() - mu).norm(dim=1).sum() for c in chunks)
        xn = (x[:median_tokens].double() - mu) * s
        med = xn.mean(0)                                   # Weiszfeld iterations from the mean
        for _ in range(iters):
            w = 1.0 / (xn - med).norm(dim=1).clamp_min(1e-8)
            new = (w[:, None] * xn).sum(0) / w.sum()
            done = (new - med).norm() < 1e-6 * math.sqrt(self.cfg.d_in)
            med = new
            if done:
                break
        self.norm_mean.copy_(mu)
        self.norm_scale.copy_(s)
        self.b_dec.copy_(med)
        self.W_enc.copy_(self._tied_encoder())

    def _tied_encoder(self):
        """W_dec^T, shrunk to ENC_INIT_NORM for unit rows (relu: as small as its rows already are)."""
        return self.W_dec.detach().t() * (1.0 if self.free_decoder else ENC_INIT_NORM)

    @torch.no_grad()
    def normalize_decoder(self):
        """Rescale decoder rows to unit norm (not relu's free rows); call after optimizer.step()."""
        if self.free_decoder:
            return
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_parallel_grad(self):
        """Drop the part of W_dec.grad along each (unit) row; call between backward() and step(). Not for
        relu's free rows, whose norms the gradient may change."""
        if self.W_dec.grad is None or self.free_decoder:
            return
        W, grad = self.W_dec, self.W_dec.grad
        # g -= (g . w / |w|^2) w per row, in place: no (S, D) temporaries (a unit copy and a product cost
        # 0.1 s per step at 16,384 x 1,024 on the CPU)
        coeff = einsum(grad, W, "s d, s d -> s") / einsum(W, W, "s d, s d -> s").clamp_min(1e-24)
        grad.addcmul_(W, coeff[:, None], value=-1.0)

    @torch.no_grad()
    def update_dead_stats(self, fired: torch.Tensor, n_tokens: int):
        """fired (S,) bool, the latents that fired on this batch of n_tokens tokens (SAEOutput.fired): add
        n_tokens to every counter, reset those of the latents that fired.

        Under torch.distributed this is a collective (every rank must call it each step): firing and
        token counts are summed over ranks so all ranks share one dead mask."""
        stats = torch.cat([fired.long(), fired.new_full((1,), n_tokens, dtype=torch.long)])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(stats)
        self.tokens_since_fired += stats[-1]
        self.tokens_since_fired[stats[:-1] > 0] = 0

    def dead_mask(self) -> torch.Tensor:
        """(S,) bool: latents that have not fired in the last cfg.dead_tokens tokens."""
        return self.tokens_since_fired >= self.cfg.dead_tokens

    # ----- encode / decode -----
    def _pre(self, x: torch.Tensor):
        """x (B, D) raw -> (x_n, x_n - b_dec), both (B, D) in normalised space."""
        x_n = (x.to(self.W_enc.dtype) - self.norm_mean) * self.norm_scale
        return x_n, x_n - self.b_dec

    def _dense_codes(self, pre: torch.Tensor, x_in: torch.Tensor) -> torch.Tensor:
        """pre (B, S), x_in (B, D) -> inference codes f (B, S), normalised units."""
        return CODES[self.cfg.kind](self, pre, x_in)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, D) raw -> z (B, S) dense latents in raw units (BatchTopK uses its threshold)."""
        _, x_in = self._pre(x)
        return self._dense_codes(torch.addmm(self.b_enc, x_in, self.W_enc), x_in) / self.norm_scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, S) raw-unit latents -> x^ (B, D) raw space."""
        return z @ self.W_dec + (self.norm_mean + self.b_dec / self.norm_scale)

    def _bag(self, idx, vals, offsets=None):
        """sum_k vals[k] W_dec[idx[k]]: decode touching only the active rows (B*K*D, not B*S*D)."""
        return F.embedding_bag(idx, self.W_dec, offsets, per_sample_weights=vals.to(self.W_dec.dtype),
                               mode="sum")

    def _prefix_decode_sparse(self, lat, rows, vals, B):
        """Entries (latent, token, value) sorted by (token, latent) -> (B, G, D) decodes of the G nested
        prefixes W_dec[:m] (no b_dec): one bag per (token, group), then running sums over the groups."""
        widths = torch.tensor(self.cfg.matryoshka_widths, device=lat.device)
        G = len(widths)
        bag = rows * G + torch.bucketize(lat, widths, right=True)   # non-decreasing: groups are contiguous
        offsets = F.pad(torch.bincount(bag, minlength=B * G).cumsum(0)[:-1], (1, 0))
        parts = self._bag(lat, vals, offsets)                       # (B*G, D), empty bags are 0
        return rearrange(parts, "(b g) d -> b g d", g=G).cumsum(1)

    def forward(self, x: torch.Tensor) -> SAEOutput:
        """x (B, D) raw activations -> SAEOutput (losses in normalised space)."""
        cfg, (B, D), S = self.cfg, x.shape, self.cfg.n_latents
        x_n, x_in = self._pre(x)
        train = self.training and torch.is_grad_enabled()
        zero = x_n.new_zeros(())
        l1, aux = zero, zero
        if cfg.kind == "topk" and self.topk_impl == "fused":
            vals, idx = _TopKEncode.apply(x_n, self.b_dec, self.W_enc, self.b_enc, cfg.k)   # (B, K)
            x_hat_n = self._bag(idx, vals) + self.b_dec
            flat = (idx + torch.arange(B, device=idx.device)[:, None] * S).flatten()      # (B*K,)
            z = SparseCodes(flat, vals.detach().flatten() / self.norm_scale, (B, S))
            n_active = (vals != 0).sum()
        elif cfg.kind in ("batchtopk", "matryoshka") and train:
            pre = torch.addmm(self.b_enc, x_in, self.W_enc).relu()                # (B, S)
            score = pre / _rank_scale(self, x_in)                                # (B, S)
            kept, flat = score.flatten().topk(B * cfg.k, sorted=False)           # (B*K,)
            flat, order = flat.sort()                                            # by (token, latent)
            kept, rows = kept[order], flat // S
            vals = pre.flatten()[flat]                                           # (B*K,) with gradient
            if cfg.kind == "batchtopk":
                offsets = F.pad(torch.bincount(rows, minlength=B).cumsum(0)[:-1], (1, 0))
                x_hat_n = self._bag(flat % S, vals, offsets) + self.b_dec
            else:
                prefixes = self._prefix_decode_sparse(flat % S, rows, vals, B)      # (B, G, D)
                x_hat_n = prefixes[:, -1] + self.b_dec
            z, n_active = SparseCodes(flat, vals.detach() / self.norm_scale, (B, S)), (vals != 0).sum()
            with torch.no_grad():   # EMA of the smallest kept score -> inference threshold
                m = torch.where(kept > 0, kept, torch.inf).min().float()
                m = torch.where(torch.isinf(m), self.threshold, m)        # nothing fired: keep it
                ema = self.threshold + cfg.threshold_lr * (m - self.threshold)
                self.threshold.copy_(torch.where(self.n_steps == 0, m, ema))
        else:
            f = self._dense_codes(torch.addmm(self.b_enc, x_in, self.W_enc), x_in)    # (B, S)
            if cfg.kind == "matryoshka":   # one matmul per group of latents, then running sums
                edges = (0,) + cfg.matryoshka_widths
                prefixes = torch.stack([f[:, a:b] @ self.W_dec[a:b] for a, b in zip(edges, edges[1:])],
                                       1).cumsum(1)                              # (B, G, D)
                x_hat_n = prefixes[:, -1] + self.b_dec
            else:
                x_hat_n = f @ self.W_dec + self.b_dec
            if cfg.kind == "relu":
                l1 = (f * self.W_dec.norm(dim=1)).sum(1).mean()
            z, n_active = f.detach() / self.norm_scale, (f != 0).sum()
        x_hat_n = x_hat_n.float()
        resid = x_n - x_hat_n
        recon_mse = resid.pow(2).mean()
        recon_term = recon_mse
        w = D / x_in.detach().pow(2).sum(1).clamp_min(1e-12) if cfg.token_weight else None   # (B,)
        if w is not None:
            recon_term = (resid.pow(2).mean(1) * w).mean()
        if cfg.kind == "matryoshka":   # every prefix reconstructs x on its own; equal weights (Bussmann et al.)
            target = (x_n - self.b_dec)[:, None]                                  # (B, 1, D)
            err = (target - prefixes.float()).pow(2).mean(2)                      # (B, G)
            recon_term = (err if w is None else err * w[:, None]).mean(0).mean()
        dead = self.dead_mask()
        if cfg.kind != "relu" and bool(dead.any()):
            dead_idx = dead.nonzero().squeeze(1)                                 # (S_dead,)
            pre_dead = torch.addmm(self.b_enc[dead_idx], x_in, self.W_enc[:, dead_idx])
            v, i = pre_dead.topk(min(cfg.aux_k, len(dead_idx)), dim=1, sorted=False)
            e = resid.detach()
            e_hat = self._bag(dead_idx[i], v.relu()).float()                      # no b_dec
            aux = (e_hat - e).pow(2).sum() / (e - e.mean(0)).pow(2).sum().clamp_min(1e-12)
        loss = recon_term + cfg.aux_coeff * aux
        if cfg.kind == "relu":   # linear warm-up of the L1 weight, as a tensor op (no host sync)
            warm = ((self.n_steps + 1) / max(cfg.l1_warmup_steps, 1)).clamp(max=1.0)
            loss = loss + cfg.l1_coeff * warm * l1
        if train:
            self.n_steps += 1
        with torch.no_grad():    # one host sync for both logged floats
            fvu = resid.pow(2).sum() / (x_n - x_n.mean(0)).pow(2).sum().clamp_min(1e-12)
            l0, fvu = torch.stack([n_active.float() / B, fvu.float()]).tolist()
        recon = (x_hat_n / self.norm_scale + self.norm_mean).to(x.dtype)
        return SAEOutput(recon, z, loss, recon_mse, aux, l1, l0, fvu)

    # ----- save / load (safetensors + JSON, no pickle) -----
    def save(self, path, fold: bool = True):
        """Write path/sae.safetensors + path/sae_config.json; fold=True bakes mu, s into the weights."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        t = {k: v.detach().cpu().clone().contiguous() for k, v in self.state_dict().items()}
        if fold:   # see class docstring: z and x^ unchanged, decoder rows stay unit-norm
            if self.free_decoder:   # relu: z_i ||w_i|| with w_i / ||w_i||, same x^ and L1; unit rows as the others
                n = t["W_dec"].norm(dim=1).clamp_min(1e-12)                   # (S,)
                t["W_dec"], t["W_enc"], t["b_enc"] = t["W_dec"] / n[:, None], t["W_enc"] * n, t["b_enc"] * n
            s = t["norm_scale"]
            t["b_enc"] = t["b_enc"] / s
            if self.cfg.batch_rank == "raw":   # 'norm' compares pre / (||x_in|| / sqrt(D)): free of s
                t["threshold"] = t["threshold"] / s
            t["b_dec"] = t["norm_mean"] + t["b_dec"] / s
            t["norm_mean"], t["norm_scale"] = torch.zeros_like(t["norm_mean"]), torch.ones_like(s)
        meta = {"format": "dust3r-sae", "version": 1, "normalisation_folded": fold,
                "config": dataclasses.asdict(self.cfg)}
        save_atomic(path / "sae_config.json", lambda tmp: tmp.write_text(json.dumps(meta, indent=2)))
        save_atomic(path / "sae.safetensors", lambda tmp: save_file(t, str(tmp)))

    @classmethod
    def load(cls, path, device="cpu") -> "SAE":
        """Read a folder written by `save`; unknown config fields or shape mismatches raise ValueError."""
        path = Path(path)
        cfg_file, w_file = path / "sae_config.json", path / "sae.safetensors"
        try:
            meta = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{cfg_file}: not valid JSON ({err})") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
            raise ValueError(f"{cfg_file}: expected a JSON object with a 'config' object")
        fields = {f.name for f in dataclasses.fields(SAEConfig)}
        extra = set(meta) - {"format", "version", "normalisation_folded", "config"}
        if meta.get("format") != "dust3r-sae" or meta.get("version") != 1 or extra:
            raise ValueError(f"{cfg_file}: expected format 'dust3r-sae' version 1, got {meta.get('format')!r} "
                             f"version {meta.get('version')!r}, unknown keys {sorted(extra)}")
        unknown = set(meta["config"]) - fields
        if unknown:
            raise ValueError(f"{cfg_file}: unknown SAEConfig fields {sorted(unknown)}; "
                             f"expected among {sorted(fields)}")
        # files from before batch_rank existed were trained, and their threshold set, with raw ranking
        config = {"batch_rank": "raw", **meta["config"]}
        try:
            sae = cls(SAEConfig(**config))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{cfg_file}: invalid SAEConfig: {err}") from None
        try:
            tensors, expected = load_file(str(w_file)), sae.state_dict()
        except Exception as err:   # safetensors' own errors do not name the file
            raise ValueError(f"{w_file}: cannot read safetensors ({err})") from None
        if set(tensors) != set(expected):
            raise ValueError(f"{w_file}: tensors {sorted(tensors)} != expected {sorted(expected)}")
        for k, v in tensors.items():
            if v.shape != expected[k].shape:
                raise ValueError(f"{w_file}: {k} has shape {tuple(v.shape)}, config {cfg_file.name} "
                                 f"implies {tuple(expected[k].shape)}")
        sae.load_state_dict(tensors)
        return sae.to(device)


# ----- metrics (training and analysis) -----
def l0(latents: torch.Tensor) -> float:
    """Mean number of non-zero latents per token (f != 0, not f > 0: saev logbook)."""
    return (latents != 0).sum(-1, dtype=torch.float32).mean().item()


class FVU:
    """Streaming FVU = sum ||x - x^||^2 / sum ||x - mean(x)||^2 over all tokens seen, in float64.

    The baseline is the error of predicting the per-dimension mean of the same set (Gao et al.'s
    normalised MSE; saev), never variance about zero (SAELens #659): SSE_base = sum ||x||^2 - ||sum x||^2 / N.
    """

    def __init__(self):
        self.n, self.sum_x, self.sum_sq, self.sse = 0, None, 0.0, 0.0

    @torch.no_grad()
    def update(self, x: torch.Tensor, x_hat: torch.Tensor):
        x, x_hat = x.reshape(-1, x.shape[-1]).double(), x_hat.reshape(-1, x.shape[-1]).double()
        self.n += x.shape[0]
        self.sum_x = x.sum(0) if self.sum_x is None else self.sum_x + x.sum(0)
        self.sum_sq += x.pow(2).sum().item()
        self.sse += (x - x_hat).pow(2).sum().item()

    def compute(self) -> float:
        base = self.sum_sq - self.sum_x.pow(2).sum().item() / self.n
        return self.sse / base if base > 0 else float("nan")


class FiringStats:
    """Per-latent firing counts over an evaluation set: frequency, dead (never fired), dense (> 1 %)."""

    def __init__(self, n_latents: int):
        self.counts, self.n_tokens = torch.zeros(n_latents, dtype=torch.float64), 0

    @torch.no_grad()
    def update(self, latents: torch.Tensor):
        self.counts += (latents != 0).sum(0).double().cpu()
        self.n_tokens += latents.shape[0]

    def frequency(self) -> torch.Tensor:
        """(S,) fraction of tokens on which each latent fired; sums to the mean L0."""
        return self.counts / max(self.n_tokens, 1)

    def n_dead(self) -> int:
        return int((self.counts == 0).sum())

    def n_dense(self, thresh: float = 1e-2) -> int:
        return int((self.frequency() > thresh).sum())

    def histogram(self, bins: int = 60, lo: float = -8.0):
        """Feature-density histogram of log10 frequency (never-fired latents in the first bin)."""
        logf = torch.log10(self.frequency().clamp_min(10 ** lo)).numpy()
        return np.histogram(logf, bins=bins, range=(lo, 0.0))
