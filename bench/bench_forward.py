"""How close our DUSt3R forward is to the machine's ceiling for it, and to the official code, measured side by side.

    python bench/bench_forward.py --official /work/official/dust3r            # or DUST3R_OFFICIAL=/work/official/dust3r
    python bench/bench_forward.py --size 224 --batch 1 --iters 3 --official ''  # ours and the ceiling only

The ceiling: every Linear, convolution and attention call of one forward (recorded with a TorchFunctionMode),
replayed bare on random contiguous inputs of the same shapes, with the model's own weights. What our forward
spends beyond that (LayerNorm, GELU, residual adds, RoPE, reshapes, interpolation, allocations) is the share
outside the GEMMs: the only part an implementation can still remove without faster kernels. A second estimate of that
share comes from torch.profiler on one call (GEMM-like op intervals over the call's wall time), which does not compare
two calls and so survives a loaded machine.
The official code (naver/dust3r with its croco submodule checked out at --official, never vendored) gets the same
random weights via load_state_dict(strict=True); ours, official and the bare replay alternate within each round,
and the fastest round of each is reported (load from other jobs only adds time; every round is in the JSON).
Sizes: 224 -> 224_linear on 224x224 pairs, 512 -> 512_dpt on 512x384 pairs;
fp32, torch.inference_mode(), inference variant (landscape_only=False), as the released checkpoints load.
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from models.dust3r import AsymmetricCroCo3DStereo  # noqa: E402

SIZES = {224: (dict(head_type="linear", img_size=(224, 224)), (224, 224)),  # arch kwargs, pair image (H, W)
         512: (dict(head_type="dpt", img_size=(512, 512)), (384, 512))}
TRUNK = dict(enc_depth=24, dec_depth=12, enc_embed_dim=1024, dec_embed_dim=768, enc_num_heads=16, dec_num_heads=12,
             pos_embed="RoPE100", patch_embed_cls="PatchEmbedDust3R", landscape_only=False)  # the released trunk
GEMMS = (F.linear, F.conv2d, F.conv_transpose2d, F.scaled_dot_product_attention)  # the ops the ceiling replays
# the same ops as the profiler names them (aten::matmul: the official explicit attention), children included
GEMM_EVENTS = {"aten::linear", "aten::conv2d", "aten::conv_transpose2d", "aten::scaled_dot_product_attention",
               "aten::matmul"}


class Recorder(TorchFunctionMode):
    """Records (op, args, kwargs) of every GEMM-like call, tensors replaced by ('shape', size) except parameters."""

    def __init__(self, params):
        super().__init__()
        self.params, self.calls = {id(p) for p in params}, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in GEMMS:
            def keep(a):
                return a if not isinstance(a, torch.Tensor) or id(a) in self.params else ("shape", a.shape)
            self.calls.append((func, [keep(a) for a in args], {k: keep(v) for k, v in kwargs.items()}))
        return func(*args, **kwargs)


def bare_replay(calls):
    """A function that runs the recorded calls on random inputs, one tensor per distinct shape (allocated once)."""
    g = torch.Generator().manual_seed(0)
    pool = {}
    def fill(a):
        if isinstance(a, tuple) and len(a) == 2 and a[0] == "shape":
            if a[1] not in pool:
                pool[a[1]] = torch.randn(a[1], generator=g)
            return pool[a[1]]
        return a
    ready = [(f, [fill(a) for a in args], {k: fill(v) for k, v in kw.items()}) for f, args, kw in calls]
    return lambda: [f(*args, **kw) for f, args, kw in ready] and None


def import_official(official_dir):
    """The official model class. croco's own top-level package is also called `models` (a namespace package, which a
    regular package anywhere on sys.path would shadow): our repo leaves sys.path and sys.modules while the official
    code imports, and comes back after (the official modules keep their references)."""
    ours = {k: sys.modules.pop(k) for k in list(sys.modules) if k == "models" or k.startswith("models.")}
    saved_path = list(sys.path)
    sys.path[:] = [official_dir] + [p for p in sys.path if os.path.abspath(p or ".") != REPO]
    try:
        from dust3r.model import AsymmetricCroCo3DStereo as Official
    finally:
        sys.path[:] = saved_path
        for k in [k for k in sys.modules if k == "models" or k.startswith("models.")]:
            sys.modules["official_croco." + k] = sys.modules.pop(k)
        sys.modules.update(ours)
    return Official


def profiled_share(call):
    """Share of one call's wall time spent outside the GEMM-like ops, from torch.profiler's op intervals (wall-clock):
    numerator and denominator come from the same call, so the figure holds on a loaded machine where call-to-call
    times drift by 10 %."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        call()
        dt = time.perf_counter() - t0
    def top(e):  # a GEMM-like op not nested inside another one (linear -> addmm -> copy_ counts once)
        p = e.cpu_parent
        while p is not None and p.name not in GEMM_EVENTS:
            p = p.cpu_parent
        return e.name in GEMM_EVENTS and p is None
    return 1 - sum(e.cpu_time_total for e in prof.events() if top(e)) / 1e6 / dt


def build(size, batch, official_dir):
    kw, (H, W) = SIZES[size]
    torch.manual_seed(0)
    ours = AsymmetricCroCo3DStereo(**TRUNK, **kw).eval()
    g = torch.Generator().manual_seed(1)
    views = [dict(img=torch.rand(batch, 3, H, W, generator=g) * 2 - 1, true_shape=torch.tensor([[H, W]] * batch),
                  instance=[f"{v}{i}" for i in range(batch)]) for v in "ab"]  # distinct: no symmetrized shortcut
    official = None
    if official_dir:
        official = import_official(official_dir)(**TRUNK, **kw).eval()
        official.load_state_dict(ours.state_dict(), strict=True)
    return ours, official, views


def run(size, batch, iters, official_dir, cpu_time):
    ours, official, views = build(size, batch, official_dir)
    with torch.inference_mode():
        rec = Recorder(ours.parameters())
        with rec:
            ref = ours(*views)  # also the warm-up
        calls, diff = {"ours": lambda: ours(*views)}, None
        if official is not None:
            out = official(*views)  # warm-up, and the agreement check
            diff = max((a[k] - b[k]).abs().max().item() for a, b in zip(ref, out) for k in a)
            calls["official"] = lambda: official(*views)
        shares = {f"profiled_outside_{k}": profiled_share(f) for k, f in calls.items()}
        if iters:  # --iters 0: the profiled share alone (two forwards, no replay: for a loaded or small machine)
            calls["bare"] = bare_replay(rec.calls)
            calls["bare"]()
        times = {k: [] for k in calls}
        for r in range(iters):
            for name in (list(calls) if r % 2 == 0 else list(calls)[::-1]):  # alternate the order between rounds
                t0 = time.process_time() if cpu_time else time.perf_counter()
                calls[name]()
                times[name].append((time.process_time() if cpu_time else time.perf_counter()) - t0)
    row = dict(size=size, batch=batch, iters=iters, clock="cpu" if cpu_time else "wall", n_gemm_calls=len(rec.calls),
               times=times, max_abs_diff_vs_official=diff, threads=torch.get_num_threads(), **shares)
    if iters:
        best = {k: min(v) for k, v in times.items()}  # noise from other jobs only ever adds time: the fastest round
        row.update(ours_s=best["ours"], bare_s=best["bare"], outside_ours=1 - best["bare"] / best["ours"])
        if "official" in best:
            row.update(official_s=best["official"], official_over_ours=best["official"] / best["ours"],
                       outside_official=1 - best["bare"] / best["official"])
    return row


def pct(r, who):
    if f"profiled_outside_{who}" not in r:
        return "-"
    vs_bare = f"{100 * r[f'outside_{who}']:.0f} %" if f"outside_{who}" in r else "-"
    return f"{vs_bare}; {100 * r[f'profiled_outside_{who}']:.0f} %"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, nargs="*", choices=list(SIZES), default=list(SIZES))
    ap.add_argument("--batch", type=int, nargs="*", default=[1, 8], help="pairs per call")
    ap.add_argument("--iters", type=int, default=3, help="timed rounds (each: ours, official, bare); 0: profile only")
    ap.add_argument("--official", default=os.environ.get("DUST3R_OFFICIAL", ""),
                    help="a naver/dust3r checkout with its croco submodule ('' = skip the official code)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--cpu_time", action="store_true",
                    help="time with the process's CPU seconds instead of wall-clock: on a machine loaded by other "
                         "jobs, "
                         "with --threads 1, this measures the work done rather than the time spent waiting for a core")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.official and not os.path.isdir(os.path.join(args.official, "croco", "models")):
        sys.exit(f"--official {args.official}: expected a naver/dust3r checkout with croco/models inside "
                 "(git submodule update --init)")
    print("| input | batch | ours s/call | official s/call | official / ours | GEMM+conv+attention bare s | "
          "outside GEMMs: ours (vs bare; profiled) | outside GEMMs: official (vs bare; profiled) |\n"
          "|---|---|---|---|---|---|---|---|")
    rows = []
    for size in args.size:
        for batch in args.batch:
            r = run(size, batch, args.iters, args.official, args.cpu_time)
            rows.append(r)
            f = lambda k, fmt: format(r[k], fmt) if k in r else "-"  # noqa: E731
            H, W = SIZES[size][1]
            print(f"| {W}x{H} | {batch} | {f('ours_s', '.2f')} | {f('official_s', '.2f')} | "
                  f"{f('official_over_ours', '.2f')} | {f('bare_s', '.2f')} | {pct(r, 'ours')} | "
                  f"{pct(r, 'official')} |", flush=True)
            if r["max_abs_diff_vs_official"] is not None:
                print(f"  max |ours - official| over pts3d/conf: {r['max_abs_diff_vs_official']:.2e}", flush=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fastest of {args.iters} rounds, "
          f"{'CPU' if args.cpu_time else 'wall-clock'} seconds")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
