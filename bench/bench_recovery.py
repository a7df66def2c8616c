"""Planted-dictionary recovery: our SAEs vs EleutherAI sparsify and dictionary_learning, side by side in one process.

Every config plants a dictionary of unit atoms, draws tokens as sparse non-negative combinations of them
plus noise, and trains each SAE on the *same* batches with the same width, k, tokens, Adam and schedule
(the scripts' lr_at: linear warm-up over 10 %, linear decay over the last 20 %). Ours goes through the
training scripts' own step (`sae_step`, grad clip 1.0 as in the scripts; the scripts train `topk:tw`, i.e.
token_weight=True, plain `topk` is SAEConfig's default); sparsify's SparseCoder through
the steps of its Trainer (b_dec = mean of the first batch, unit-norm decoder before each forward, FVU loss,
parallel gradient removed, no clipping, AuxK off: its defaults); dictionary_learning's BatchTopK and Matryoshka
BatchTopK (the BatchTopK papers' code, `dl-batchtopk`, `dl-matryoshka`) through their trainers' own `update`.
ReLU+L1 (`relu:l0`, and dictionary_learning's April-update trainer `dl-relu:l0`) is matched to the L0 of the TopK kinds
by bisecting its L1 weight. Reported on a held-out set of the same
distribution: FVU (centred), L0, dead fraction (never fired on it), recovery = mean over true atoms of the
best cosine to a decoder row, and the share of atoms found at cos > 0.9; tokens/s of training (steps
interleaved, so load on a shared machine hits both alike). Null: a random decoder's recovery is printed
per config. Run from the repo root (benchmark-only dependencies: pip install -r requirements-bench.txt, and
pip install --no-deps -r requirements-bench-nodeps.txt for the dl-* kinds):

    python -m bench.bench_recovery --quick                          # every config, a quarter of the tokens
    python -m bench.bench_recovery --configs tiny,toy --lrs 1e-3,3e-3,1e-2 --seeds 0,1,2 \
        --kinds topk,batchtopk,batchtopk:rank=raw,dl-batchtopk,matryoshka,dl-matryoshka,sparsify --out small.json
    python -m bench.bench_recovery --configs tiny,toy --tokens_mult 10 --kinds topk,batchtopk,relu:l0,sparsify
    python -m bench.bench_recovery --table small.json                 # mean ± sd over seeds, as markdown
    python -m bench.bench_recovery --throughput                     # one step at d=1024, 16x, k=32, batch 4096
    python -m bench.bench_recovery --throughput --device cuda --bf16 --steps 20   # GPU: both in bf16 autocast

Configs (`--configs`): tiny (the test suite's seconds-long case), toy (the issue's: d 64, 512 atoms,
Exp(1)+0.5 magnitudes), mid (d 256), tree (64 parents with 4 children each, a child only beside its parent:
the feature-absorption case; adds the `absorption` metric), vit (ViT-like: d 1024, anisotropic power-law spectrum, large
non-zero mean, log-normal heavy-tailed magnitudes, atoms correlated in groups of 8 with pairwise cos
~0.3, Zipf feature frequencies), vitreg (vit plus 2 % high-norm outlier tokens, as large ViTs have; adds `fvu_in`
and `fvu_out`, the FVU of the ordinary and of the outlier tokens), var (toy with 1 to 15 atoms per token: complexity
that varies, BatchTopK's case).
On CPU sparsify's Triton decoder cannot run; SPARSIFY_DISABLE_TRITON=1 (set here before the import)
selects its eager embedding_bag decoder.
"""
import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from bench.planted import Planted, absorption, recovery
from models.sae import FVU, SAE, SAEConfig, _rank_scale
from training.step import lr_at, sae_step

CONFIGS = {  # d, planted atoms, SAE width, k, active atoms per token (lo, hi), magnitudes, tokens, batch, ...
    "tiny": dict(d=32, atoms=128, width=256, k=4, active=(2, 4), mags="exp", noise=0.01, aniso=0.0, offset=0.0,
                 corr=0.0, zipf=0.0, tokens=100_000, batch=512),   # tests/test_sae_recovery.py's case
    "toy": dict(d=64, atoms=512, width=1024, k=8, active=(4, 8), mags="exp", noise=0.01, aniso=0.0, offset=0.0,
                corr=0.0, zipf=0.0, tokens=400_000, batch=2048),
    "mid": dict(d=256, atoms=1024, width=2048, k=16, active=(8, 16), mags="exp", noise=0.02, aniso=0.0, offset=1.0,
                corr=0.0, zipf=0.5, tokens=200_000, batch=1024),
    "tree": dict(d=64, atoms=64, tree=4, width=512, k=8, active=(2, 4), mags="exp", noise=0.01, aniso=0.0,
                 offset=0.0, corr=0.0, zipf=0.0, tokens=400_000, batch=2048),   # 64 parents x 4 children (Matryoshka)
    "vit": dict(d=1024, atoms=1024, width=2048, k=16, active=(8, 16), mags="lognormal", noise=0.05, aniso=1.0,
                offset=3.0, corr=0.3, zipf=0.7, tokens=100_000, batch=512),
}
# vit plus high-norm outlier tokens (Darcet et al. 2024, "Vision Transformers Need Registers": large ViTs put a few
# percent of patch tokens at several times the usual norm): 2 % of tokens gain 4x the mean token norm along one of
# 4 fixed directions. They hold most of the centred variance, so the unweighted FVU is mostly theirs; the
# `fvu_in` / `fvu_out` metrics split it (each subset about its own mean).
CONFIGS["vitreg"] = dict(CONFIGS["vit"], outliers=0.02, outlier_scale=4.0, outlier_dirs=4)
# toy whose tokens vary in complexity: 1 to 15 active atoms (mean 8 = k), so a fixed k per token is too many for
# some and too few for others: the case BatchTopK's batch-wide allocation is for (Bussmann et al. 2024)
CONFIGS["var"] = dict(CONFIGS["toy"], active=(1, 15))
GRAD_CLIP = 1.0   # what train_encoder_sae.py / train_decoder_sae.py use
THRESHOLD_WINDOW = 0.05   # BatchTopK's inference-threshold EMA spans ~5 % of the steps: the scripts' rate 0.01 spans
                          # 100 of their ~24k steps, but in a 200-step benchmark it would lag the drifting scores
                          # (toy, lr 3e-3: inference L0 5.9 instead of 8, FVU 0.214 vs 0.192 at this window)


class Ours:
    """Our SAE trained by the scripts' sae_step (same init path as the scripts: init_from_sample).

    spec = kind[:tweak...], the tweaks being the diagnosis's single-factor changes to our recipe:
    enc=<c> encoder columns of norm c at init (the recipe: models.sae.ENC_INIT_NORM), clip=<v> grad clip, aux=<a>
    AuxK weight (the recipe: 1/32), auxk=<n> AuxK's k (the recipe: 512), rank=raw|norm BatchTopK's ranking,
    thr=<r> its threshold's EMA rate, inf=topk evaluate it with per-token top-k instead of its threshold,
    inf=cal with the threshold that gives mean L0 = k on the evaluation set itself (an oracle calibration),
    inf=batch with batch top-k over evaluation batches of the training batch size (its training rule),
    tw per-token relative-error loss (SAEConfig.token_weight),
    l1=<c> the ReLU kind's L1 weight (to match another kind's L0), unit its decoder rows held at norm 1 (the recipe
    before RELU_DEC_INIT_NORM), dec=<c> its rows' initial norm,
    nonorm no input normalisation (mu = 0, s = 1), bmean b_dec at the sample mean instead of the median."""

    def __init__(self, spec, c, total_steps, init_x):
        kind, *tweaks = spec.split(":")
        self.name, self.clip, self.inference, self.batch = spec, GRAD_CLIP, None, c["batch"]
        self.sae = SAE(SAEConfig(d_in=c["d"], n_latents=c["width"], kind=kind, k=c["k"],
                                 dead_tokens=min(10_000_000, max(c["batch"], c["tokens"] // 20)),
                                 l1_warmup_steps=max(1, total_steps // 20),
                                 threshold_lr=max(0.01, 1 / (THRESHOLD_WINDOW * total_steps))))
        self.sae.init_from_sample(init_x)
        with torch.no_grad():
            for t in tweaks:
                if t.startswith("enc="):
                    self.sae.W_enc.copy_(self.sae.W_dec.t() * float(t[4:]))
                elif t.startswith("clip="):
                    self.clip = float(t[5:])
                elif t.startswith("l1="):
                    self.sae.cfg.l1_coeff = float(t[3:])
                elif t == "tw":
                    self.sae.cfg.token_weight = True
                elif t == "unit":   # relu as before the April-update recipe: unit rows held at norm 1
                    self.sae.free_decoder = False
                    self.sae.normalize_decoder()
                    self.sae.W_enc.copy_(self.sae._tied_encoder())
                elif t.startswith("dec="):   # relu: decoder rows start at this norm, the encoder tied to them
                    self.sae.W_dec.mul_(float(t[4:]) / self.sae.W_dec.norm(dim=1, keepdim=True))
                    self.sae.W_enc.copy_(self.sae._tied_encoder())
                elif t in ("inf=topk", "inf=cal", "inf=batch"):
                    self.inference = t[4:]
                elif t.startswith("thr="):
                    self.sae.cfg.threshold_lr = float(t[4:])
                elif t.startswith("rank="):
                    self.sae.cfg.batch_rank = t[5:]
                elif t.startswith("auxk="):
                    self.sae.cfg.aux_k = int(t[5:])
                elif t.startswith("aux="):
                    self.sae.cfg.aux_coeff = float(t[4:])
                elif t == "nonorm":
                    self.sae.norm_mean.zero_()
                    self.sae.norm_scale.fill_(1.0)
                    self.sae.b_dec.copy_(init_x.mean(0))
                elif t == "bmean":
                    self.sae.b_dec.copy_(((init_x - self.sae.norm_mean) * self.sae.norm_scale).mean(0))
                else:
                    raise SystemExit(f"--kinds: unknown tweak {t!r} in {spec!r}; expected enc=, clip=, aux=, auxk=, l1=, unit, dec=, rank=, thr=, inf=topk|cal|batch, tw, nonorm, bmean")
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=1.0)

    def step(self, x, lr):
        sae_step(self.sae, self.opt, x=x, lr=lr, grad_clip=self.clip, world_size=1)

    @torch.no_grad()
    def evaluate(self, x):
        self.sae.eval()
        kind = self.sae.cfg.kind
        if self.inference in ("cal", "batch"):
            recon, fired = self._batch_rule(x)
        else:
            if self.inference == "topk":   # a BatchTopK SAE read with each token's own top k instead of the threshold
                self.sae.cfg.kind = "topk"
            out = self.sae(x)
            self.sae.cfg.kind = kind
            recon, fired = out.recon, out.latents != 0
        self.sae.train()
        return recon, fired, self.sae.W_dec

    def _batch_rule(self, x):
        """A BatchTopK SAE's codes kept by score = pre / r (models.sae) against the oracle threshold (inf=cal)
        or by batch top-k over consecutive batches of the training size (inf=batch)."""
        sae, k = self.sae, self.sae.cfg.k
        _, x_in = sae._pre(x)
        pre = torch.addmm(sae.b_enc, x_in, sae.W_enc).relu()                        # (B, S)
        score = pre / _rank_scale(sae, x_in)                                         # (B, S)
        if self.inference == "cal":
            keep = score >= score.flatten().topk(len(x) * k).values.min()
        else:
            keep = torch.cat([s >= s.flatten().topk(len(s) * k).values.min() for s in score.split(self.batch)])
        f = pre * keep
        return (f @ sae.W_dec + sae.b_dec) / sae.norm_scale + sae.norm_mean, f != 0

    def bf16_step(self, x, lr):
        sae_step(self.sae, self.opt, x=x, lr=lr, grad_clip=GRAD_CLIP, world_size=1, bf16=True)


class Sparsify:
    """sparsify's SparseCoder, stepped as its Trainer does (fvu loss, AuxK off by default)."""

    def __init__(self, c, total_steps, init_x):
        from sparsify import SparseCoder, SparseCoderConfig
        self.name = "sparsify-topk"
        self.sae = SparseCoder(c["d"], SparseCoderConfig(num_latents=c["width"], k=c["k"]), device=init_x.device)
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=1.0)
        self.first = True

    def step(self, x, lr):
        if self.first:   # Trainer: b_dec = mean of the first batch
            self.sae.b_dec.data = x.mean(0)
            self.first = False
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.sae.set_decoder_norm_to_unit_norm()
        out = self.sae(x)
        out.fvu.backward()
        self.sae.remove_gradient_parallel_to_decoder_directions()
        self.opt.step()
        self.opt.zero_grad()

    @torch.no_grad()
    def evaluate(self, x):
        self.sae.set_decoder_norm_to_unit_norm()
        out = self.sae(x)
        fired = torch.zeros(x.shape[0], self.sae.num_latents, dtype=torch.bool, device=x.device)
        fired.scatter_(1, out.latent_indices, out.latent_acts > 0)
        return out.sae_out, fired, self.sae.W_dec


def _dictionary_learning_trainers():
    """dictionary_learning's trainer modules need only torch and einops, but its package __init__ imports
    nnsight (an LLM-tracing library, not installed: requirements-bench-nodeps.txt is installed with
    --no-deps). Register the package without running its __init__, then import the trainer modules."""
    import importlib
    import importlib.util
    import types
    if "dictionary_learning" not in sys.modules:
        spec = importlib.util.find_spec("dictionary_learning")
        if spec is None:
            raise SystemExit("dl-* kinds need dictionary_learning: pip install --no-deps -r requirements-bench-nodeps.txt")
        pkg = types.ModuleType("dictionary_learning")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["dictionary_learning"] = pkg
    return tuple(importlib.import_module(f"dictionary_learning.trainers.{m}")
                 for m in ("batch_top_k", "matryoshka_batch_top_k", "standard"))


class DictionaryLearning:
    """dictionary_learning's BatchTopK / Matryoshka BatchTopK trainers (the papers' authors' reference code),
    stepped through their own `update` (geometric-median b_dec, summed-MSE loss, AuxK, grad clip 1) with our
    learning-rate schedule, dead window, threshold EMA rate and Matryoshka prefixes (S/16, S/8, .., S); and its
    ReLU+L1 trainer after Anthropic's April-2024 update (`dl-relu[:l1=<weight>]`: decoder norms free, L1 weighted
    by them and warmed up over 5 % of the steps as ours, no input normalisation, rows initialised at norm 0.1)."""

    def __init__(self, spec, c, total_steps, init_x):
        batch_top_k, matryoshka, standard = _dictionary_learning_trainers()
        kind, *tweaks = spec.split(":")
        self.name = "dl-" + spec
        common = dict(steps=total_steps, activation_dim=c["d"], dict_size=c["width"], layer=0, lm_name="-",
                      warmup_steps=max(1, total_steps // 10), device=str(init_x.device), lr=1.0)
        topk = dict(k=c["k"], threshold_start_step=0,
                    threshold_beta=1 - max(0.01, 1 / (THRESHOLD_WINDOW * total_steps)))
        if kind == "batchtopk":
            self.trainer = batch_top_k.BatchTopKTrainer(**common, **topk)
        elif kind == "matryoshka":
            self.trainer = matryoshka.MatryoshkaBatchTopKTrainer(group_fractions=[1 / 16, 1 / 16, 1 / 8, 1 / 4, 1 / 2],
                                                                 **common, **topk)
        elif kind == "relu":   # Anthropic's April-2024 recipe, as ours: L1 weighted by decoder norms, warmed up
            l1 = [float(t[3:]) for t in tweaks if t.startswith("l1=")]
            self.trainer = standard.StandardTrainerAprilUpdate(l1_penalty=l1[0] if l1 else 0.1,
                                                               sparsity_warmup_steps=max(1, total_steps // 20), **common)
        else:
            raise SystemExit(f"--kinds: dictionary_learning kinds are dl-batchtopk, dl-matryoshka and dl-relu, not dl-{kind}")
        if any(not t.startswith("l1=") for t in tweaks) or (tweaks and kind != "relu"):
            raise SystemExit(f"--kinds: {spec!r}: dl-relu takes only l1=<weight> (and l0), the other dl-* kinds no tweaks")
        self.trainer.dead_feature_threshold = min(10_000_000, max(c["batch"], c["tokens"] // 20))
        self.n = 0

    def step(self, x, lr):
        for group in self.trainer.optimizer.param_groups:   # our schedule; update() then steps theirs, overridden next time
            group["lr"] = lr
        self.trainer.update(self.n, x)
        self.n += 1

    @torch.no_grad()
    def evaluate(self, x):
        ae = self.trainer.ae
        f = ae.encode(x)                                    # their inference (BatchTopK: JumpReLU at the learnt threshold)
        rows = ae.W_dec if hasattr(ae, "W_dec") else ae.decoder.weight.T
        return ae.decode(f), f != 0, rows


def evaluate(model, x_eval, atoms, seconds, tokens, tree=None, out_mask=None):
    recon, fired, rows = model.evaluate(x_eval)
    fvu = FVU()
    fvu.update(x_eval, recon)
    rec, share = recovery(atoms, rows.float())
    extra = {}
    if out_mask is not None:   # FVU of the ordinary and of the high-norm tokens, each about its own mean
        for key, m in (("fvu_in", ~out_mask), ("fvu_out", out_mask)):
            part = FVU()
            part.update(x_eval[m], recon[m])
            extra[key] = part.compute()
    if tree is not None:
        extra["absorption"], extra["parents_found"] = absorption(tree[0], fired.cpu(), atoms.cpu(),
                                                                 rows.float().cpu(), tree[1])
    per_token = fired.sum(1).float()                                     # (B,) latents each token uses
    return dict(model=model.name, fvu=fvu.compute(), l0=per_token.mean().item(), l0_sd=per_token.std().item(),
                dead_frac=(~fired.any(0)).float().mean().item(), recovery=rec, share_09=share,
                tokens_per_s=tokens / seconds, **extra)


def make_model(kind, c, total, init_x):
    if kind == "sparsify":
        return Sparsify(c, total, init_x)
    if kind.startswith("dl-"):
        return DictionaryLearning(kind[3:], c, total, init_x)
    return Ours(kind, c, total, init_x)


def run_config(name, c, lr, kinds, dev, seed):
    """Train every kind in `kinds` on the same batches; 'relu:l0' and 'dl-relu:l0' kinds are matched to L0 = k
    separately."""
    matched = [kind for kind in kinds if kind.split(":")[0] in ("relu", "dl-relu") and "l0" in kind.split(":")[1:]]
    together = [kind for kind in kinds if kind not in matched]
    rows = train(name, c, lr, together, dev, seed) if together else []
    for kind in matched:
        rows.append(match_l0(name, c, lr, kind, dev, seed))
    return rows


def match_l0(name, c, lr, spec, dev, seed, tries=7, tol=0.1):
    """ReLU+L1 at the L0 of the TopK kinds: bisect log(l1 weight) on full runs over the same batches (each
    try redraws the stream from the seed) until the held-out L0 is within tol of k; report the closest try.
    Ours brackets the weight in [1e-3, 1]; dl-relu (summed MSE on raw activations, no input normalisation) in
    [1e-3, 100] times D / s, s = sqrt(D) / E||x - mean|| our input scale (the factor that makes the two losses
    the same function), with two more tries for the wider bracket."""
    base = ":".join(t for t in spec.split(":") if t != "l0")
    unit, top = 1.0, 1.0
    if base.startswith("dl-"):
        x = Planted(**c, seed=seed).sample(8192)
        unit = c["d"] * (x - x.mean(0)).norm(dim=1).mean().item() / math.sqrt(c["d"])
        top, tries = 100.0, tries + 2
    lo, hi, best = math.log(1e-3 * unit), math.log(top * unit), None
    for _ in range(tries):
        l1 = math.exp((lo + hi) / 2)
        row = train(name, c, lr, [f"{base}:l1={l1:.4g}"], dev, seed, quiet=True)[0]
        if best is None or abs(math.log(max(row["l0"], 1e-3) / c["k"])) < abs(math.log(max(best["l0"], 1e-3) / c["k"])):
            best = dict(row, l1=l1)
        if abs(row["l0"] / c["k"] - 1) <= tol:
            break
        lo, hi = (lo, math.log(l1)) if row["l0"] < c["k"] else (math.log(l1), hi)
    best["model"] = spec
    report(best)
    return best


def report(r):
    extra = (f" l1 {r['l1']:.4g}" if "l1" in r else "")
    extra += f" fvu in/out {r['fvu_in']:.4f} / {r['fvu_out']:.4f}" if "fvu_in" in r else ""
    extra += f" absorption {r['absorption']:.3f} over {r['parents_found']} parents" if "absorption" in r else ""
    print(f"{r['config']:4s} lr {r['lr']:7.1e} seed {r['seed']} {r['model']:16s} fvu {r['fvu']:.4f} l0 {r['l0']:6.2f} "
          f"(sd {r['l0_sd']:.2f}) "
          f"dead {r['dead_frac']:.3f} recovery {r['recovery']:.4f} share>0.9 {r['share_09']:.3f} "
          f"{r['tokens_per_s']:8.0f} tok/s (null recovery {r['null_recovery']:.3f}){extra}", flush=True)


def train(name, c, lr, kinds, dev, seed, quiet=False):
    torch.manual_seed(seed)
    data = Planted(**c, seed=seed)
    atoms = data.atoms.to(dev)
    x_eval = data.sample(8192 if c["d"] < 1024 else 4096).to(dev)
    tree = (data.last, data.n_parents) if data.tree else None          # the eval draw's parents and children
    out_mask = data.last_out.to(dev) if data.outliers else None          # the eval draw's outlier tokens
    total = c["tokens"] // c["batch"]
    init_x = data.sample(32768).to(dev)
    models = []
    for kind in kinds:
        torch.manual_seed(seed)
        models.append(make_model(kind, c, total, init_x))
    secs = [0.0] * len(models)
    warm = max(1, total // 10)
    for step in range(total):
        x = data.sample(c["batch"]).to(dev)
        lr_now = lr_at(step, total, lr=lr, warmup_steps=warm, decay_frac=0.2)
        for i, m in enumerate(models):
            t0 = time.perf_counter()
            m.step(x, lr_now)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            secs[i] += time.perf_counter() - t0
    null, _ = recovery(atoms, torch.randn(c["width"], c["d"], device=dev))
    rows = []
    for m, s in zip(models, secs):
        r = dict(config=name, lr=lr, seed=seed, tokens=total * c["batch"], null_recovery=null,
                 **evaluate(m, x_eval, atoms, s, total * c["batch"], tree=tree, out_mask=out_mask))
        rows.append(r)
        if not quiet:
            report(r)
    return rows


def throughput(dev, steps, bf16):
    """One training step at d=1024, 16x, k=32, batch 4096: ours vs sparsify, interleaved, median time."""
    c = dict(d=1024, width=16384, k=32, batch=4096, tokens=10 ** 9)   # dead window 10M tokens: no AuxK, as sparsify
    x = torch.randn(4096, 1024, device=dev) * 2 + 0.5
    models = [Ours("topk", c, 100, x), Sparsify(c, 100, x)]
    times = [[] for _ in models]
    for step in range(steps + 1):
        for i, m in enumerate(models):
            t0 = time.perf_counter()
            if isinstance(m, Ours) and bf16:
                m.bf16_step(x, 2e-4)
            else:
                m.step(x, 2e-4)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if step > 0:   # the first step (allocations, b_dec init) untimed
                times[i].append(time.perf_counter() - t0)
    rows = []
    for m, t in zip(models, times):
        med = sorted(t)[len(t) // 2]
        rows.append(dict(model=m.name, d=1024, width=16384, k=32, batch=4096, steps=steps, ms_per_step=1000 * med,
                         tokens_per_s=4096 / med))
        print(f"{m.name:14s} {1000 * med:9.1f} ms/step {4096 / med:10.0f} tokens/s (median of {steps})", flush=True)
    print(f"ours / sparsify tokens/s: {rows[0]['tokens_per_s'] / rows[1]['tokens_per_s']:.2f}")
    return rows


def table(paths, wide=False):
    """Markdown table of --out files' rows: per (config, lr, model), the mean over seeds (± sd when > 1);
    wide: one row per (config, lr), one column per model, cells 'recovery / FVU' (means)."""
    groups = {}
    for path in paths:
        for r in json.loads(Path(path).read_text())["rows"]:
            groups.setdefault((r["config"], r["lr"], r["model"]), []).append(r)
    if wide:
        models = list(dict.fromkeys(m for _, _, m in groups))
        print("| config | lr | seeds | " + " | ".join(models) + " |")
        print("|---|---|---|" + "---|" * len(models))
        for config, lr in dict.fromkeys((c, lr) for c, lr, _ in groups):
            cells = []
            for m in models:
                rows = groups.get((config, lr, m), [])
                mean = lambda key: sum(r[key] for r in rows) / max(len(rows), 1)
                cells.append(f"{mean('recovery'):.4f} / {mean('fvu'):.4f}" if rows else "")
            n = len(groups[next(k for k in groups if k[:2] == (config, lr))])
            print(f"| {config} | {lr:.0e} | {n} | " + " | ".join(cells) + " |")
        return
    keys = ("fvu", "l0", "dead_frac", "recovery", "share_09")
    extra = [key for key in ("l0_sd", "fvu_in", "fvu_out", "absorption")
             if any(key in r for g in groups.values() for r in g)]
    keys += tuple(extra)
    print("| config | tokens | lr | model | seeds | FVU | L0 | dead | recovery | share > 0.9 |" + "".join(f" {key} |" for key in extra))
    print("|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(extra))
    for (config, lr, model), rows in groups.items():
        cells = []
        for key in keys:
            if not any(key in r for r in rows):   # a metric of other configs (absorption: tree only)
                cells.append("")
                continue
            v = torch.tensor([r.get(key, float("nan")) for r in rows], dtype=torch.float64)
            digits = 2 if key in ("l0", "l0_sd") else 4 if key in ("fvu", "recovery", "fvu_in", "fvu_out") else 3
            sd = f" ± {v.std().item():.{digits}f}" if len(v) > 1 else ""
            cells.append(f"{v.mean().item():.{digits}f}{sd}")
        l1 = f" (l1 {rows[0]['l1']:.3g})" if len(rows) == 1 and "l1" in rows[0] else ""
        print(f"| {config} | {rows[0]['tokens'] / 1e3:.0f}k | {lr:.0e} | {model}{l1} | {len(rows)} | " + " | ".join(cells) + " |")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="tiny,toy,mid,vit", help=f"comma list of {sorted(CONFIGS)}")
    p.add_argument("--lrs", default="3e-3", help="comma list of peak learning rates (a sweep)")
    p.add_argument("--kinds", default="topk,batchtopk,matryoshka,sparsify",
                   help="ours: topk, batchtopk, matryoshka, relu, each optionally with ':'-separated tweaks "
                   "(class Ours; e.g. topk:enc=1:clip=0); 'sparsify' = its TopK SparseCoder")
    p.add_argument("--quick", action="store_true", help="a quarter of the tokens")
    p.add_argument("--tokens_mult", type=float, default=1.0, help="scale every config's tokens (10: the long runs "
                   "ReLU+L1 needs)")
    p.add_argument("--throughput", action="store_true", help="only the one-step throughput comparison")
    p.add_argument("--steps", type=int, default=3, help="--throughput: timed steps per library")
    p.add_argument("--bf16", action="store_true", help="--throughput on CUDA: our step under bf16 autocast "
                   "(sparsify autocasts its forward to bf16 on CUDA by itself)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seeds", default="0", help="comma list of seeds (planted dictionary, stream and inits)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: small ops on a shared machine "
                   "run faster than with oversubscribed OpenMP threads)")
    p.add_argument("--out", default="", help="write the rows as JSON here")
    p.add_argument("--table", default="", help="comma list of --out files: print their rows as a markdown table "
                   "(mean ± sd over seeds) and exit")
    p.add_argument("--wide", action="store_true", help="--table: one row per config and lr, 'recovery / FVU' per model")
    args = p.parse_args()
    if args.table:
        return table(args.table.split(","), wide=args.wide)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if dev.type == "cpu":   # must precede the first sparsify import
        os.environ["SPARSIFY_DISABLE_TRITON"] = "1"
    if args.throughput:
        rows = throughput(dev, args.steps, args.bf16)
    else:
        rows = []
        for name in args.configs.split(","):
            if name not in CONFIGS:
                raise SystemExit(f"--configs: unknown config {name!r}; expected among {sorted(CONFIGS)}")
            c = dict(CONFIGS[name])
            c["tokens"] = int(c["tokens"] * args.tokens_mult)
            if args.quick:
                c["tokens"] //= 4
            for lr in [float(v) for v in args.lrs.split(",")]:
                for seed in [int(v) for v in args.seeds.split(",")]:
                    rows += run_config(name, c, lr, args.kinds.split(","), dev, seed)
    info = dict(command=" ".join(["python -m bench.bench_recovery"] + sys.argv[1:]), torch=torch.__version__,
                threads=torch.get_num_threads(), cpu_count=os.cpu_count(), loadavg_1min_at_end=os.getloadavg()[0],
                device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", rows=rows)
    print(f"1-min load average at end: {info['loadavg_1min_at_end']:.1f} on {os.cpu_count()} cores")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
