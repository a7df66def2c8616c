"""Planted-dictionary recovery: our SAEs vs EleutherAI sparsify and dictionary_learning, side by side in one process.

Every config plants a dictionary of unit atoms, draws tokens as sparse non-negative combinations of them
plus noise, and trains each SAE on the *same* batches with the same width, k, tokens, Adam and schedule
(the scripts' lr_at: linear warm-up over 10 %, linear decay over the last 20 %). Ours goes through the
training scripts' own step (`sae_step`, grad clip 1.0 as in the scripts; the scripts train `topk:tw`, i.e.
token_weight=True, plain `topk` is SAEConfig's default); sparsify's SparseCoder through
the steps of its Trainer (b_dec = mean of the first batch, unit-norm decoder before each forward, FVU loss,
parallel gradient removed, no clipping, AuxK off: its defaults); dictionary_learning's BatchTopK and Matryoshka
BatchTopK (the BatchTopK papers' code, `dl-batchtopk`, `dl-matryoshka`) through their trainers' own `update`.
ReLU+L1 (`relu:l0`, and dictionary_learning's April-update trainer `dl-relu:l0`; `dl-relu:norm=1:l0` feeds it our
input normalisation) is matched to the L0 of the TopK kinds by bisecting its L1 weight, and its FVU and recovery
are also read at L0 = k exactly (`fvu_at_k`, `recovery_at_k`: interpolated between the bisection's tries).
Reported on a held-out set of the same distribution: FVU (centred), L0, dead fraction (never fired on it),
recovery = mean over true atoms of the best cosine to a decoder row, the share of atoms found at cos > 0.9, `dup`
the share found by two or more live latents, and tokens/s of training (steps interleaved, so load on a shared
machine hits both alike). Null: a random decoder's recovery is printed
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

from bench.planted import Planted, absorption, duplicates, recovery
from bench.recovery_models import Ours, Sparsify, make_model
from models.sae import FVU
from training.step import lr_at

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
                dup=duplicates(atoms, rows.float(), fired.any(0)), tokens_per_s=tokens / seconds, **extra)


def run_config(name, c, lr, kinds, dev, seed):
    """Train every kind in `kinds` on the same batches; 'relu:l0' and 'dl-relu:l0' kinds are matched to L0 = k
    separately."""
    matched = [kind for kind in kinds if kind.split(":")[0] in ("relu", "dl-relu") and "l0" in kind.split(":")[1:]]
    together = [kind for kind in kinds if kind not in matched]
    rows = train(name, c, lr, together, dev, seed) if together else []
    for kind in matched:
        rows.append(match_l0(name, c, lr, kind, dev, seed))
    return rows


def match_l0(name, c, lr, spec, dev, seed, tries=7, tol=0.1, span=0.3):
    """ReLU+L1 at the L0 of the TopK kinds: bisect log(l1 weight) on full runs over the same batches (each
    try redraws the stream from the seed) until the held-out L0 is within tol of k and k is bracketed by tries
    within span of it; report the closest try, plus `fvu_at_k` and `recovery_at_k`, each interpolated linearly
    in log L0 between the bracketing tries nearest to k (so that kinds whose closest tries land at different L0
    compare at L0 = k itself; NaN when k was not bracketed).
    Ours brackets the weight in [1e-3, 1]; dl-relu (summed MSE on raw activations, no input normalisation) in
    [1e-3, 100] times D / s, s = sqrt(D) / E||x - mean|| our input scale (the factor that makes the two losses
    the same function; with norm=<c>, D c), with two more tries for the wider bracket."""
    base = ":".join(t for t in spec.split(":") if t != "l0")
    unit, top, k = 1.0, 1.0, c["k"]
    if base.startswith("dl-"):
        x = Planted(**c, seed=seed).sample(8192)
        unit = c["d"] * (x - x.mean(0)).norm(dim=1).mean().item() / math.sqrt(c["d"])
        for t in base.split(":"):   # norm=<c>: it sees our normalised inputs times c, so s is sqrt(D) c / E||x - mean||
            unit = c["d"] * float(t[5:]) if t.startswith("norm=") else unit
        top, tries = 100.0, tries + 2
    lo, hi, runs = math.log(1e-3 * unit), math.log(top * unit), []

    def dist(r):   # how far a try's L0 is from k, in log
        return abs(math.log(max(r["l0"], 1e-3) / k))

    for _ in range(tries):
        l1 = math.exp((lo + hi) / 2)
        runs.append(dict(train(name, c, lr, [f"{base}:l1={l1:.4g}"], dev, seed, quiet=True)[0], l1=l1))
        below = [r for r in runs if k * (1 - span) <= r["l0"] <= k]
        above = [r for r in runs if k <= r["l0"] <= k * (1 + span)]
        if min(map(dist, runs)) <= math.log(1 + tol) and below and above:
            break
        lo, hi = (lo, math.log(l1)) if runs[-1]["l0"] < k else (math.log(l1), hi)
    best = dict(min(runs, key=dist), model=spec, l0_tries=[round(r["l0"], 3) for r in runs])
    for key in ("fvu", "recovery"):
        best[f"{key}_at_k"] = at_l0(runs, k, key)
    report(best)
    return best


def at_l0(runs, k, key):
    """runs[key] at L0 = k, linear in log L0 between the tries nearest to k on either side; NaN if none brackets k."""
    below = [r for r in runs if 0 < r["l0"] <= k]
    above = [r for r in runs if r["l0"] >= k]
    if not below or not above:
        return float("nan")
    a, b = max(below, key=lambda r: r["l0"]), min(above, key=lambda r: r["l0"])
    t = 0.0 if b["l0"] == a["l0"] else math.log(k / a["l0"]) / math.log(b["l0"] / a["l0"])
    return a[key] + t * (b[key] - a[key])


def report(r):
    extra = (f" l1 {r['l1']:.4g}" if "l1" in r else "")
    extra += f" at L0 = k: fvu {r['fvu_at_k']:.4f} recovery {r['recovery_at_k']:.4f}" if "fvu_at_k" in r else ""
    extra += f" fvu in/out {r['fvu_in']:.4f} / {r['fvu_out']:.4f}" if "fvu_in" in r else ""
    extra += f" absorption {r['absorption']:.3f} over {r['parents_found']} parents" if "absorption" in r else ""
    print(f"{r['config']:4s} lr {r['lr']:7.1e} seed {r['seed']} {r['model']:16s} fvu {r['fvu']:.4f} l0 {r['l0']:6.2f} "
          f"(sd {r['l0_sd']:.2f}) "
          f"dead {r['dead_frac']:.3f} recovery {r['recovery']:.4f} share>0.9 {r['share_09']:.3f} dup {r['dup']:.3f} "
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
    """Markdown table of --out files' rows: per (config, tokens, lr, model), the mean over seeds (± sd when > 1);
    wide: one row per (config, tokens, lr), one column per model, cells 'recovery / FVU' (means)."""
    groups = {}
    for path in paths:
        for r in json.loads(Path(path).read_text())["rows"]:
            groups.setdefault((r["config"], r["tokens"], r["lr"], r["model"]), []).append(r)
    if wide:
        models = list(dict.fromkeys(key[3] for key in groups))
        print("| config | lr | seeds | " + " | ".join(models) + " |")
        print("|---|---|---|" + "---|" * len(models))
        for run in dict.fromkeys(key[:3] for key in groups):
            cells = []
            for m in models:
                rows = groups.get((*run, m), [])
                mean = lambda key: sum(r[key] for r in rows) / max(len(rows), 1)
                cells.append(f"{mean('recovery'):.4f} / {mean('fvu'):.4f}" if rows else "")
            n = len(groups[next(key for key in groups if key[:3] == run)])
            print(f"| {run[0]} | {run[2]:.0e} | {n} | " + " | ".join(cells) + " |")
        return
    keys = ("fvu", "l0", "dead_frac", "recovery", "share_09")
    extra = [key for key in ("l0_sd", "dup", "fvu_at_k", "recovery_at_k", "fvu_in", "fvu_out", "absorption")
             if any(key in r for g in groups.values() for r in g)]
    keys += tuple(extra)
    print("| config | tokens | lr | model | seeds | FVU | L0 | dead | recovery | share > 0.9 |" + "".join(f" {key} |" for key in extra))
    print("|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(extra))
    for (config, _, lr, model), rows in groups.items():
        cells = []
        for key in keys:
            if not any(key in r for r in rows):   # a metric of other configs (absorption: tree only)
                cells.append("")
                continue
            v = torch.tensor([r.get(key, float("nan")) for r in rows], dtype=torch.float64)
            digits = 2 if key in ("l0", "l0_sd") else 4 if key in ("fvu", "recovery", "fvu_in", "fvu_out", "fvu_at_k",
                                                                     "recovery_at_k") else 3
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
