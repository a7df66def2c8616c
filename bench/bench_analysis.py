"""The analysis' DUSt3R work per batch: (A, B), (B, A), (A, A) with the encoder run once per image
(analysis/pairings.py, what analyze_results.py does) against three full passes (its reference path,
`--reuse_encoder=False`), side by side in one process: alternating calls, median over rounds.

    python -m bench.bench_analysis --out results/bench_analysis_cpu.json        # CPU: ViT-L 224, 2 pairs, 3 rounds
    python -m bench.bench_analysis --device=cuda --pairs=16 --rounds=10         # GPU (bf16 autocast, as the script)

The full-size DUSt3R_ViTLarge_BaseDecoder_224_linear architecture with random weights (speed does not depend on
them), built-in val pairs at 224, for an encoder hook (enc_norm) and a decoder hook (both branches of block 5).
Every round also checks that both paths return identical tokens, grids and outputs.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from analysis.pairings import pairing_tokens  # noqa: E402
from data import collate_pairs, make_dataset  # noqa: E402
from models.loading import load_dust3r  # noqa: E402
from training.hooks import view_sources  # noqa: E402


def same(a, b):
    """Both paths' results (dicts of tuples of tensors, and the outputs' dicts) are equal, bit for bit."""
    (ra, (a1, a2)), (rb, (b1, b2)) = a, b
    return (ra.keys() == rb.keys() and all(torch.equal(x, y) for k in ra for x, y in zip(ra[k], rb[k]))
            and all(torch.equal(x[k], y[k]) for x, y in ((a1, b1), (a2, b2)) for k in x))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--checkpoint", default="random-224", help="random-224 (full size) | random-tiny | a real one")
    p.add_argument("--hooks", default="enc_norm,dec_blocks*.5", help="training hooks, comma-separated")
    p.add_argument("--pairs", type=int, default=2, help="pairs per batch (analyze_results.py batch_size)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per path (after one warm-up each)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--out", default="")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = load_dust3r(args.checkpoint, device, landscape_only=True)  # the training variant, as the scripts
    ds = make_dataset("builtin", split="val", resolution=224)
    view1, view2 = collate_pairs([ds[i] for i in range(args.pairs)])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = []
    for hook in args.hooks.split(","):
        hooks = view_sources(hook)  # (slot-1 point, slot-2 point), as analyze_results.py
        times, identical = {True: [], False: []}, True
        for r in range(args.rounds + 1):  # round 0 warms both paths up
            res = {}
            for reuse in ((True, False) if r % 2 else (False, True)):  # alternate which path goes first
                sync()
                t0 = time.perf_counter()
                res[reuse] = pairing_tokens(model, view1, view2, hooks, controls=True, device=device, reuse=reuse)
                sync()
                if r:
                    times[reuse].append(time.perf_counter() - t0)
            identical &= same(res[True], res[False])
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append(dict(hook=hook, points=hooks, pairs=args.pairs, rounds=args.rounds, s_reused=med[True],
                         s_three_passes=med[False], speedup=med[False] / med[True], identical=identical,
                         all_s_reused=times[True], all_s_three_passes=times[False]))
        print(f"{hook:14s} {args.pairs} pairs: three passes {med[False]:.2f} s, encoder once {med[True]:.2f} s "
              f"-> {med[False] / med[True]:.2f}x; identical outputs: {identical}", flush=True)
    info = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
                or platform.machine(), threads=torch.get_num_threads(), torch=torch.__version__,
                loadavg_1min_at_end=os.getloadavg()[0], command=" ".join(sys.argv), rows=rows)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(info, f, indent=1)
    sys.exit(0 if all(r["identical"] for r in rows) else 1)


if __name__ == "__main__":
    main()
