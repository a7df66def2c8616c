"""Benchmark the built-in scenes: pairs/s read in order in one process, and through make_loader with workers.

    python bench/bench_data.py                      # 224 and 512, 64 pairs each
    python bench/bench_data.py --resolution 224 --pairs 128 --workers 4

Every view is ray-cast on first use and then cached per process (64 views), so in-order reading of a
scene's pairs reuses views and shuffled reading re-renders more.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data import make_dataset, make_loader  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolution", type=int, nargs="*", default=[224, 512])
    ap.add_argument("--pairs", type=int, default=64, help="pairs timed per setting")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers for the loader setting")
    ap.add_argument("--batch", type=int, default=8, help="pairs per loader batch")
    args = ap.parse_args()
    for res in args.resolution:
        ds = make_dataset("builtin", resolution=res, split="train", seed=0)
        n = min(args.pairs, len(ds))
        t0 = time.perf_counter()
        for i in range(n):
            ds[i]
        seq = n / (time.perf_counter() - t0)
        ds = make_dataset("builtin", resolution=res, split="train", seed=0)  # fresh view cache
        loader = make_loader(ds, args.batch, shuffle=True, seed=0, num_workers=args.workers)
        t0, seen = time.perf_counter(), 0
        for view1, _ in loader:
            seen += len(view1["img"])
            if seen >= n:
                break
        shuf = seen / (time.perf_counter() - t0)
        print(f"builtin {res}: {seq:.1f} pairs/s in order (1 process), "
              f"{shuf:.1f} pairs/s shuffled through make_loader ({args.workers} workers, batch {args.batch})")


if __name__ == "__main__":
    main()
