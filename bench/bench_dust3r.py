"""Benchmark our DUSt3R forward: pairs/s, peak memory, achieved TFLOP/s and model FLOPs utilisation.

    python bench/bench_dust3r.py                                  # every config this machine can run
    python bench/bench_dust3r.py --arch 224_linear --mode encoder --device cpu --iters 3 --out bench.json
    python bench/bench_dust3r.py --device cuda --dtype bf16 --compile none inductor   # eager and torch.compile

Full-size architectures with random weights (no checkpoint needed): 512_dpt on 512x384 pairs, 224_linear on
224x224 pairs. Modes: 'full' (points + confidence) and 'encoder' (what an encoder SAE needs: forward_hooks up
to enc_norm, nothing after). CPU runs fp32; CUDA runs fp32 (TF32 off, as official numerics) and bf16 autocast
(heads stay fp32). FLOPs are counted by torch's FlopCounterMode on an eager call (2 FLOPs per MAC, the
convention of the spec's 1.857 TFLOP per 512x384 pair). MFU is reported against the GPU's dense peak.
`--compile inductor` times torch.compile(mode default) of the same call (its first call, compilation
included, is reported apart); `--compile eager` runs dynamo's tracing without code generation (CI).
The tiny_* archs (the golden fixtures' sizes) are for CI (bench/gpu_check.py --tiny).
Each config runs in its own subprocess so that peak RSS (CPU) belongs to that config alone.
"""
import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VIT_L = dict(enc_depth=24, dec_depth=12, enc_embed_dim=1024, dec_embed_dim=768, enc_num_heads=16, dec_num_heads=12)
TINY = dict(enc_depth=2, dec_depth=10, enc_embed_dim=48, dec_embed_dim=32, enc_num_heads=3, dec_num_heads=2)  # golden
ARCHS = {  # trunk + head; input (H, W) of the pair's images
    "512_dpt": (dict(VIT_L, head_type="dpt"), (384, 512)),  # the released models' trunks
    "224_linear": (dict(VIT_L, head_type="linear"), (224, 224)),
    "tiny_dpt": (dict(TINY, head_type="dpt"), (64, 96)),  # CI only: exercises the code, says nothing about speed
    "tiny_linear": (dict(TINY, head_type="linear"), (64, 64)),
}
# dense (no 2:4 sparsity) peak TFLOP/s; fp32 = the non-tensor-core FP32 rate (we turn TF32 off). NVIDIA's datasheets
# (H100: nvidia.com/en-us/data-center/h100, H200: nvidia.com/en-us/data-center/h200) give BF16 with sparsity, twice
# these: SXM 1979, PCIe 1513, NVL 1671. H200 SXM has the H100 SXM's compute (same GH100 die, faster memory).
# First match wins, so the form factors come before the bare names (SXM parts report e.g. "NVIDIA H100 80GB HBM3").
PEAK_TFLOPS = [("H100 PCIe", {"fp32": 51.0, "bf16": 756.0}), ("H100 NVL", {"fp32": 60.0, "bf16": 835.0}),
               ("H200 NVL", {"fp32": 60.0, "bf16": 835.0}), ("H100", {"fp32": 67.0, "bf16": 989.0}),
               ("H200", {"fp32": 67.0, "bf16": 989.0})]


def peak_tflops(device_name, dtype):
    """The device's dense peak for dtype from PEAK_TFLOPS, or None for a GPU not in the table."""
    return next((v[dtype] for k, v in PEAK_TFLOPS if k in device_name), None)


def run_one(arch, device, dtype, mode, batch, iters, compile="none"):
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from models.dust3r import AsymmetricCroCo3DStereo
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (official croco import turns TF32 on)
    torch.backends.cudnn.allow_tf32 = False
    kw, (H, W) = ARCHS[arch]
    with torch.device(device):  # random init on the device itself: seconds instead of a minute for ViT-L on a CPU
        model = AsymmetricCroCo3DStereo(pos_embed="RoPE100", landscape_only=False, **kw).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    views = [dict(img=(torch.rand(batch, 3, H, W, generator=g) * 2 - 1).to(device),
                  true_shape=torch.tensor([[H, W]] * batch), instance=[str(i) for i in range(batch)]) for _ in range(2)]
    eager = (lambda: model(*views)) if mode == "full" else (lambda: model.forward_hooks(*views, ["enc_norm"]))
    call = eager if compile == "none" else torch.compile(eager, backend=compile)
    amp = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=dtype == "bf16")
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with torch.inference_mode(), amp:
        # FLOP count on an eager call. The counter knows the math attention (matmul + softmax) but not every
        # fused SDPA kernel, so count with the math backend: the same FLOPs the official code does
        with FlopCounterMode(display=False) as fc, sdpa_kernel(SDPBackend.MATH):
            eager()
        flops = fc.get_total_flops() / batch
        t0 = time.perf_counter()
        call()  # warm-up (compiles when compiling)
        sync()
        first_call_s = time.perf_counter() - t0
        call()
        sync()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(iters):
            call()
        sync()
        dt = (time.perf_counter() - t0) / iters
    pairs_s = batch / dt
    mem = (torch.cuda.max_memory_allocated() / 2**30 if device == "cuda"
           else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    out = dict(arch=arch, device=device, dtype=dtype, mode=mode, compile=compile, batch=batch, iters=iters,
               first_call_s=first_call_s, s_per_batch=dt,
               pairs_per_s=pairs_s, tflop_per_pair=flops / 1e12, tflops_achieved=pairs_s * flops / 1e12,
               peak_mem_gib=mem, mem_kind="cuda max allocated" if device == "cuda" else "peak RSS")
    if device == "cuda":
        name = torch.cuda.get_device_name()
        out["device_name"] = name
        peak = peak_tflops(name, dtype)
        out["peak_tflops"], out["mfu"] = peak, out["tflops_achieved"] / peak if peak else None
    else:
        out["device_name"] = _cpu_name()
        out["threads"] = torch.get_num_threads()
    return out


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "cpu"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=list(ARCHS), nargs="*", default=["512_dpt", "224_linear"])
    ap.add_argument("--mode", choices=["full", "encoder"], nargs="*", default=["full", "encoder"])
    ap.add_argument("--device", choices=["cpu", "cuda"], nargs="*", default=None, help="default: cpu, plus cuda if present")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], nargs="*", default=None,
                    help="default: fp32 on CPU, fp32 and bf16 (autocast) on CUDA")
    ap.add_argument("--compile", nargs="*", default=["none"],
                    help="'none' (eager) and/or torch.compile backends: 'inductor' (GPU speed), 'eager' (tracing only)")
    ap.add_argument("--batch", type=int, default=None, help="pairs per call (default 1 on CPU, 8 on CUDA)")
    ap.add_argument("--iters", type=int, default=None, help="timed calls (default 3 on CPU, 20 on CUDA)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one config, print JSON
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(**json.loads(args.one))))
        return
    import torch
    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    rows, failed = [], 0
    for device in devices:
        for arch in args.arch:
            for mode in args.mode:
                dtypes = args.dtype or (["fp32"] if device == "cpu" else ["fp32", "bf16"])
                for dtype, compile in itertools.product(dtypes, args.compile):
                    cfg = dict(arch=arch, device=device, dtype=dtype, mode=mode, compile=compile,
                               batch=args.batch or (1 if device == "cpu" else 8),
                               iters=args.iters or (3 if device == "cpu" else 20))
                    p = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg)], capture_output=True, text=True)
                    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
                    if p.returncode or not line:
                        print(f"{cfg} failed:\n{p.stderr[-2000:]}", file=sys.stderr)
                        failed += 1
                        continue
                    r = json.loads(line[0][7:])
                    rows.append(r)
                    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
                    print(f"| {r['arch']} | {r['mode']} | {r['device']} {r['dtype']} {r['compile']} | {r['batch']} | "
                          f"{r['pairs_per_s']:.3f} | {r['s_per_batch'] / r['batch']:.3f} | {r['tflop_per_pair']:.3f} | "
                          f"{r['tflops_achieved']:.3f} | {mfu} | {r['peak_mem_gib']:.2f} |", flush=True)
    if rows:
        print(f"device: {rows[-1]['device_name']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
