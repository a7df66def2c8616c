"""Benchmark the data readers: pairs/s per CPU core, with and without geometry, at 224 and 512.

    python bench/bench_data.py                                   # all datasets, 224 and 512, 3 rounds
    python bench/bench_data.py --datasets blendedmvs --resolution 224 --pairs 32 --rounds 5

What one DataLoader worker does for the training stream, in one process with one thread: read the
training split's pairs in a shuffled order and collate them in batches (`--batch`). geometry=True is
what evaluation and analysis read (depth, pointmaps, masks); geometry=False is what SAE training
reads (images only). Both run side by side, alternating within each round, on fresh datasets (the
built-in scenes' view cache starts cold each time), and the medians over rounds are reported.
"pairs/s per core" divides by the process's CPU time, so it counts only this process's work and
is less sensitive than wall time to other jobs on a shared machine (both are printed).

BlendedMVS and ARKitScenes trees are written first (to --tree_dir, else a temporary folder) in
DUSt3R's preprocessed layouts at the real sizes, with built-in room renders as content:
  BlendedMVS   768x576 JPEG (Pillow quality 80), float32 ZIP EXR depth, camera .npz (dust3r's
               preprocess_blendedMVS.py output)
  ARKitScenes  640x480 vga_wide JPEG (Pillow default quality) + 640x480 uint16 PNG depth, upsampled
               nearest-neighbour from a 256x192 render (preprocess_arkitscenes.py resizes lowres_depth
               to the RGB size with INTER_NEAREST_EXACT)
Files sit in the page cache after the first round: disk reads are not measured.

The last table turns per-core speed into the CPU cores one GPU needs for an encoder hook at 224:
GPU pairs/s = peak TFLOP/s * MFU / TFLOP per pair, where the TFLOP per pair of the encoder (up to
enc_norm, both views) is counted by torch's FlopCounterMode in bench/bench_dust3r.py.
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core: no hidden BLAS / OpenMP threads

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data import collate_pairs, make_dataset  # noqa: E402
from data.exr import write_exr  # noqa: E402
from data.render import render  # noqa: E402
from data.scenes import make_scene  # noqa: E402

SCENES, VIEWS = 2, 8  # per tree: scenes x views; pairs are views at most 2 apart (26 pairs)


def _scene_views(s, sizes):
    """Built-in room s rendered by each of its VIEWS cameras at every size in sizes -> [[render per size]]."""
    scene = make_scene(1234, "train", s, views_per_scene=VIEWS)
    return [[render(scene, i, size) for size in sizes] for i in range(VIEWS)]


def _neighbour_pairs(n):
    return [(i, j) for i in range(n) for j in range(i + 1, min(i + 2, n - 1) + 1)]


def build_blendedmvs(root):
    rows = []
    for s in range(SCENES):
        seq_high, seq_low = 0x5a000000 + s, 1000 * s + 7  # seq_low % 10 > 0: the train split
        folder = os.path.join(root, f"{seq_high:08x}{seq_low:016x}")
        os.makedirs(folder)
        for i, [(img, depth, K, pose)] in enumerate(_scene_views(s, [(768, 576)])):
            base = os.path.join(folder, f"{i:08d}")
            PIL.Image.fromarray(img).save(base + ".jpg", quality=80)
            write_exr(base + ".exr", depth)
            np.savez(base + ".npz", intrinsics=np.float32(K), R_cam2world=pose[:3, :3],
                     t_cam2world=np.float32(pose[:3, 3]))
        rows += [(seq_high, seq_low, i, j, 0.5) for i, j in _neighbour_pairs(VIEWS)]
    dtype = [("seq_high", "<u4"), ("seq_low", "<u8"), ("img1", "<u4"), ("img2", "<u4"), ("score", "<f4")]
    np.save(os.path.join(root, "blendedmvs_pairs.npy"), np.array(rows, dtype=dtype))


def build_arkitscenes(root):
    split = os.path.join(root, "Training")
    scenes, sceneids, images, Ks, poses, pairs = [], [], [], [], [], []
    for s in range(SCENES):
        scene = f"4{s:07d}"
        for sub in ("vga_wide", "lowres_depth"):
            os.makedirs(os.path.join(split, scene, sub))
        for i, [(img, _, K, pose), (_, lowres, _, _)] in enumerate(_scene_views(s, [(640, 480), (256, 192)])):
            name = f"{scene}_{100 + i / 10:.3f}.png"
            PIL.Image.fromarray(img).save(os.path.join(split, scene, "vga_wide", name.replace(".png", ".jpg")))
            ys, xs = (np.arange(480) * 192) // 480, (np.arange(640) * 256) // 640  # nearest upsampling
            mm = np.uint16(np.round(lowres[ys[:, None], xs[None, :]] * 1000))
            PIL.Image.fromarray(mm).save(os.path.join(split, scene, "lowres_depth", name))
            sceneids.append(s), images.append(name), Ks.append(K), poses.append(pose)
        pairs += [(s * VIEWS + i, s * VIEWS + j, 0.5) for i, j in _neighbour_pairs(VIEWS)]
        scenes.append(scene)
    np.savez(os.path.join(split, "all_metadata.npz"), scenes=np.array(scenes), sceneids=np.array(sceneids),
             images=np.array(images), intrinsics=np.array(Ks), trajectories=np.array(poses),
             pairs=np.array(pairs, np.float64), counts=np.arange(SCENES) * VIEWS)
    with open(os.path.join(split, "scene_list.json"), "w") as f:
        json.dump(scenes, f)


def time_reading(ds, order, batch):
    """Read and collate pairs `order` in batches -> (pairs per CPU second, pairs per wall second, MB per pair)."""
    cpu, wall, nbytes = time.process_time(), time.perf_counter(), 0
    for b in range(0, len(order), batch):
        views = collate_pairs([ds[int(i)] for i in order[b:b + batch]])
        nbytes += sum(v.numel() * v.element_size() for view in views for v in view.values() if torch.is_tensor(v))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return len(order) / cpu, len(order) / wall, nbytes / len(order) / 1e6


def encoder_tflop_per_pair():
    """FLOPs of the 224_linear encoder (forward_hooks up to enc_norm, both views) by FlopCounterMode."""
    cfg = dict(arch="224_linear", device="cpu", dtype="fp32", mode="encoder", batch=1, iters=1)
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_dust3r.py")
    p = subprocess.run([sys.executable, script, "--one", json.dumps(cfg)], capture_output=True, text=True)
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    if p.returncode or not line:
        raise RuntimeError(f"bench_dust3r.py --one {cfg} failed:\n{p.stderr[-2000:]}")
    return json.loads(line[0][7:])["tflop_per_pair"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="*", default=["blendedmvs", "arkitscenes", "builtin"],
                    choices=["blendedmvs", "arkitscenes", "builtin"])
    ap.add_argument("--resolution", type=int, nargs="*", default=[224, 512])
    ap.add_argument("--pairs", type=int, default=48, help="pairs timed per setting and round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported")
    ap.add_argument("--batch", type=int, default=8, help="pairs per collated batch (DUSt3R batch per worker)")
    ap.add_argument("--tree_dir", default=None, help="write the dataset trees here (default: a temporary folder)")
    ap.add_argument("--peak_tflops", type=float, default=989.0, help="GPU dense bf16 peak (H100 SXM: 989)")
    ap.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation of the encoder forward")
    ap.add_argument("--tflop_per_pair", type=float, default=None,
                    help="encoder TFLOP per 224 pair (default: counted with FlopCounterMode)")
    args = ap.parse_args()
    torch.set_num_threads(1)

    tmp = None if args.tree_dir else tempfile.TemporaryDirectory()
    tree = args.tree_dir or tmp.name
    roots = {"builtin": None, "blendedmvs": os.path.join(tree, "blendedmvs"),
             "arkitscenes": os.path.join(tree, "arkitscenes")}
    t0 = time.perf_counter()
    for name, build in (("blendedmvs", build_blendedmvs), ("arkitscenes", build_arkitscenes)):
        if name in args.datasets and not os.path.exists(roots[name]):
            build(roots[name])
    print(f"trees in {tree} ({time.perf_counter() - t0:.0f} s); {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} at start; 1 thread, {args.pairs} pairs x {args.rounds} rounds per setting")

    results = {}  # (name, res) -> {geometry: [(cpu pairs/s, wall pairs/s, MB/pair) per round]}
    for name in args.datasets:
        for res in args.resolution:
            runs = results[name, res] = {True: [], False: []}
            n = len(make_dataset(name, roots[name], resolution=res, split="train"))
            for r in range(args.rounds):
                # the training stream's order: a seeded permutation per epoch, repeated as needed
                order = np.concatenate([np.random.default_rng([r, e]).permutation(n)
                                        for e in range(-(-args.pairs // n))])[:args.pairs]
                for geometry in ((True, False) if r % 2 == 0 else (False, True)):  # alternate who goes first
                    ds = make_dataset(name, roots[name], resolution=res, split="train", geometry=geometry)
                    runs[geometry].append(time_reading(ds, order, args.batch))

    print("\n| dataset | resolution | geometry | pairs/s per core (CPU time) | pairs/s (wall) | MB per pair "
          "collated | speed-up without geometry |\n|---|---|---|---|---|---|---|")
    med = lambda rows, k: statistics.median(row[k] for row in rows)  # noqa: E731
    for (name, res), runs in results.items():
        ratio = statistics.median(b[0] / a[0] for a, b in zip(runs[True], runs[False]))
        for geometry in (True, False):
            rows = runs[geometry]
            print(f"| {name} | {res} | {'yes' if geometry else 'no'} | {med(rows, 0):.1f} | {med(rows, 1):.1f} | "
                  f"{med(rows, 2):.2f} | {'' if geometry else f'{ratio:.2f}x'} |")

    if 224 not in args.resolution:
        return
    tflop = args.tflop_per_pair or encoder_tflop_per_pair()
    gpu = args.peak_tflops * args.mfu / tflop
    print(f"\nGPU at {args.peak_tflops:g} TFLOP/s x {args.mfu:.0%} MFU / {tflop:.4f} TFLOP per pair (encoder to "
          f"enc_norm, 224) = {gpu:.0f} pairs/s\n\n| dataset (224, no geometry) | pairs/s per core | cores for one GPU "
          "|\n|---|---|---|")
    for name in args.datasets:
        if (name, 224) in results:
            per_core = med(results[name, 224][False], 0)
            print(f"| {name} | {per_core:.1f} | {gpu:.0f} / {per_core:.1f} = {gpu / per_core:.0f} |")


if __name__ == "__main__":
    main()
