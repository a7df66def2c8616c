"""SAE training throughput (tokens/s) on cached-style activations, at the real DUSt3R sizes.

Random fp16 tokens stand in for an activation cache: they are written once to a memory-mapped file
and every step reads its batch from there (fp16 -> fp32 on the device), as training from the cache
does (the file sits in the page cache, so this times the copy and conversion, not a disk).
One training step = the scripts' sae_step (training/step.py): forward, backward, parallel-gradient removal,
grad-norm clip 1.0, Adam step, decoder renormalisation, dead-latent update; reported: the median over the
timed steps.
Sizes: d = 1024 (encoder), 768 (decoder), 16x width, k = 32. Run from the repo root:

    python -m bench.bench_sae --threads 1 --steps 5 --out results/bench_sae_cpu.json  # CPU, ~2 min
    python -m bench.bench_sae --device=cuda --bf16 --out results/bench_sae_cuda.json  # GPU, bf16 autocast

Variants: topk (fused sparse encoder backward + embedding_bag decode), topk-dense (reference:
autograd top-k, dense (B, S) x (S, D) decode), batchtopk, relu (ReLU + L1, dense by nature).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from models.sae import SAE, SAEConfig
from training.step import sae_step

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
p.add_argument("--batch", type=int, default=None, help="tokens per step (default 1024 CPU, 16384 GPU)")
p.add_argument("--steps", type=int, default=None, help="timed steps per config (default 3 CPU, 30 GPU)")
p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
p.add_argument("--dims", default="1024,768")
p.add_argument("--expansion", type=int, default=16)
p.add_argument("--k", type=int, default=32)
p.add_argument("--variants", default="topk,topk-dense,batchtopk,relu")
p.add_argument("--dead_frac", type=float, default=0.0, help="fraction of latents marked dead (AuxK cost)")
p.add_argument("--bf16", action="store_true", help="bf16 autocast for the SAE forward/backward")
p.add_argument("--no_memmap", action="store_true", help="random batches already on the device")
p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
p.add_argument("--out", default=None, help="write results as JSON here")
args = p.parse_args()
dev = torch.device(args.device)
gpu = dev.type == "cuda"
batch = args.batch or (16384 if gpu else 1024)
steps = args.steps or (30 if gpu else 3)
torch.manual_seed(0)
if args.threads:
    torch.set_num_threads(args.threads)


def sync():
    if gpu:
        torch.cuda.synchronize()


def hardware() -> str:
    if gpu:
        return torch.cuda.get_device_name(dev)
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        name = platform.processor() or "unknown CPU"
    return f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


rows = []
tmp = tempfile.TemporaryDirectory()
for d in [int(v) for v in args.dims.split(",")]:
    n_tok = batch * (steps + args.warmup)
    cache = None
    if not args.no_memmap:   # cached-style fp16 memmap, (tokens, d)
        cache = np.lib.format.open_memmap(f"{tmp.name}/acts_{d}.npy", mode="w+", dtype=np.float16, shape=(n_tok, d))
        for i in range(0, n_tok, 65536):
            cache[i:i + 65536] = np.random.default_rng(i).standard_normal((min(65536, n_tok - i), d), dtype=np.float32)
        cache.flush()
    for variant in args.variants.split(","):
        kind = variant.split("-")[0]
        cfg = SAEConfig(d_in=d, n_latents=args.expansion * d, kind=kind, k=args.k)
        sae = SAE(cfg).to(dev)
        sae.topk_impl = "dense" if variant.endswith("dense") else "fused"
        sae.init_from_sample(torch.randn(4096, d, device=dev) * 3 + 1)
        n_dead = int(args.dead_frac * cfg.n_latents)
        sae.tokens_since_fired[:n_dead] = cfg.dead_tokens     # stays dead unless they fire
        opt = torch.optim.Adam(sae.parameters(), lr=2e-4)
        t_read, t_step = [], []
        for step in range(args.warmup + steps):
            sync()
            t0 = time.perf_counter()
            if cache is not None:
                x = torch.from_numpy(cache[step * batch:(step + 1) * batch]).to(dev, non_blocking=True).float()
            else:
                x = torch.randn(batch, d, device=dev)
            sync()
            t1 = time.perf_counter()
            out = sae_step(sae, opt, x=x, lr=2e-4, grad_clip=1.0, world_size=1, bf16=args.bf16)  # the scripts' step
            sync()
            t2 = time.perf_counter()
            if step >= args.warmup:
                t_read.append(t1 - t0)
                t_step.append(t2 - t0)
        med = float(np.median(t_step))   # median: robust to other jobs on a shared machine
        rows.append({"d_in": d, "n_latents": cfg.n_latents, "k": args.k, "variant": variant, "batch": batch,
                     "bf16": args.bf16, "steps": steps, "dead_frac": args.dead_frac,
                     "ms_per_step": 1000 * med, "ms_per_step_mean": 1000 * float(np.mean(t_step)),
                     "read_share": float(np.median(t_read)) / med, "tokens_per_s": batch / med, "l0": out.l0, "fvu": out.fvu})
        r = rows[-1]
        print(f"d={d:5d} S={cfg.n_latents:6d} {variant:11s} B={batch:6d} {'bf16' if args.bf16 else 'fp32'} "
              f"{r['ms_per_step']:9.1f} ms/step {r['tokens_per_s']:10.0f} tok/s  read {100 * r['read_share']:4.1f}%",
              flush=True)
        del sae, opt, out
    del cache

info = {"device": hardware(), "torch": torch.__version__, "command": " ".join(sys.argv),
        "loadavg_1min_at_end": os.getloadavg()[0], "results": rows}
print(f"\n{info['device']}; torch {info['torch']}; 1-min load average at end {info['loadavg_1min_at_end']:.1f}")
print(f"{'d_in':>5} {'latents':>7} {'variant':>11} {'batch':>6} {'ms/step':>9} {'tokens/s':>10} {'read %':>6}")
for r in rows:
    print(f"{r['d_in']:5d} {r['n_latents']:7d} {r['variant']:>11} {r['batch']:6d} {r['ms_per_step']:9.1f} "
          f"{r['tokens_per_s']:10.0f} {100 * r['read_share']:6.1f}")
if args.out:
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(info, indent=2))
    print(f"wrote {args.out}")
