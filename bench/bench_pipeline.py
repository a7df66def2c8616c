"""Streamed SAE-training pipeline throughput: pairs/s, tokens/s and where the time goes (data, DUSt3R, SAE).

Run from the repo root:

    python -m bench.bench_pipeline --out results/bench_pipeline_cpu.json    # CPU, ~3 min on 2 cores
    python -m bench.bench_pipeline --device=cuda --pairs=512 --dust3r_batch=32 --batch_size=16384 \
        --buffer_pairs=256 --out results/bench_pipeline_cuda.json                         # GPU (bf16 autocast)

It runs what the training scripts run, with the same functions: the built-in scenes through a DataLoader,
the full-size DUSt3R_ViTLarge_BaseDecoder_224_linear architecture with random weights (`random-224`; the
speed does not depend on the weights) up to the hook point (`extract`), the token buffer, and
`sae_step` (forward, backward, constraint maintenance, Adam) of a 16x-wide TopK SAE with k = 32 on
d = 1024 (encoder, enc_norm) or d = 768 (decoder, both branches of dec_blocks*.5). Time is split into
data (waiting for the loader), DUSt3R and SAE; on CUDA each phase ends with a synchronize. The first
buffer is a warm-up and is not timed. CPU defaults are kept small (16 pairs, SAE batch 2048 tokens) so
the run stays short; the GPU command uses the scripts' batch (16384 tokens).
"""
import argparse
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data import make_dataset, make_loader  # noqa: E402
from models.loading import load_dust3r  # noqa: E402
from models.sae import SAE, SAEConfig  # noqa: E402
from training.hooks import extract, hook_sources  # noqa: E402
from training.step import sae_step  # noqa: E402

PREFIXES = {"encoder": ("enc_blocks.", "enc_norm"), "decoder": ("dec_blocks",)}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(side, args, device):
    hook = args.encoder_hook if side == "encoder" else args.decoder_hook
    sources = hook_sources(hook, PREFIXES[side])
    model = load_dust3r(args.checkpoint, device, landscape_only=True)  # as the training scripts
    d = model.enc_embed_dim if side == "encoder" else model.dec_embed_dim
    sae = SAE(SAEConfig(d_in=d, n_latents=args.expansion * d, k=args.k)).to(device)
    opt = torch.optim.Adam(sae.parameters(), lr=2e-4)
    ds = make_dataset("builtin", split="train", resolution=224, geometry=False)  # as the training scripts
    n = args.buffer_pairs * (1 + args.pairs // args.buffer_pairs)  # one warm-up buffer, then the timed ones
    loader = iter(make_loader(ds, args.dust3r_batch, sampler=[i % len(ds) for i in range(n)],
                              num_workers=args.num_workers))
    times = {"data": 0.0, "dust3r": 0.0, "sae": 0.0}
    pairs = tokens = steps = 0
    rng = torch.Generator(device=device).manual_seed(0)
    for buf in range(n // args.buffer_pairs):
        timed = buf > 0
        parts, got = [], 0
        while got < args.buffer_pairs:
            t = time.perf_counter()
            view1, view2 = next(loader)
            t1 = time.perf_counter()
            x, _ = extract(model, view1, view2, sources, device)
            sync(device)
            t2 = time.perf_counter()
            parts.append(x.reshape(-1, d))
            got += len(x)
            if timed:
                times["data"] += t1 - t
                times["dust3r"] += t2 - t1
                pairs += len(x)
        t = time.perf_counter()
        buffer = torch.cat(parts)
        if buf == 0:
            sae.init_from_sample(buffer[:65536].float())
        perm = torch.randperm(len(buffer), device=device, generator=rng)
        for s in range(len(buffer) // args.batch_size):
            sae_step(sae, opt, x=buffer[perm[s * args.batch_size:(s + 1) * args.batch_size]].float(), lr=2e-4,
                     grad_clip=1.0, world_size=1, bf16=device.type == "cuda")  # as the scripts' default sae_bf16
            if timed:
                steps += 1
                tokens += args.batch_size
        sync(device)
        if timed:
            times["sae"] += time.perf_counter() - t
    total = sum(times.values())
    return dict(side=side, hook=hook, d=d, n_latents=args.expansion * d, k=args.k, pairs=pairs, sae_steps=steps,
                tokens_trained=tokens, tokens_per_pair=len(buffer) // args.buffer_pairs,
                seconds=total, pairs_per_s=pairs / total, tokens_per_s=tokens / total,
                share={k: v / total for k, v in times.items()},
                dust3r_pairs_per_s=pairs / times["dust3r"], sae_tokens_per_s=tokens / max(times["sae"], 1e-9))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--checkpoint", default="random-224", help="random-224 (full size) | random-tiny | a real one")
    p.add_argument("--sides", default="encoder,decoder")
    p.add_argument("--encoder_hook", default="enc_norm")
    p.add_argument("--decoder_hook", default="dec_blocks*.5", help="both branches into one SAE")
    p.add_argument("--pairs", type=int, default=16, help="timed pairs per side (after one warm-up buffer)")
    p.add_argument("--buffer_pairs", type=int, default=16)
    p.add_argument("--dust3r_batch", type=int, default=4)
    p.add_argument("--batch_size", type=int, default=2048, help="SAE tokens per step")
    p.add_argument("--expansion", type=int, default=16)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--num_workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--out", default="")
    args = p.parse_args()
    if args.buffer_pairs * 392 < args.batch_size:  # 2 x 196 tokens per 224 pair at both hooks
        p.error(f"--buffer_pairs={args.buffer_pairs} holds fewer tokens than --batch_size={args.batch_size}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 numerics as official; DUSt3R runs bf16 autocast anyway
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
               or platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__,
               "args": vars(args), "runs": []}
    for side in args.sides.split(","):
        r = bench(side, args, device)
        results["runs"].append(r)
        sh = r["share"]
        print(f"{side:8s} {r['hook']:14s} d={r['d']} S={r['n_latents']} k={r['k']}: {r['pairs_per_s']:.3f} pairs/s, "
              f"{r['tokens_per_s']:.0f} tokens/s trained | time: data {sh['data']:.0%}, DUSt3R {sh['dust3r']:.0%}, "
              f"SAE {sh['sae']:.0%} | DUSt3R alone {r['dust3r_pairs_per_s']:.3f} pairs/s, SAE alone "
              f"{r['sae_tokens_per_s']:.0f} tokens/s", flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
