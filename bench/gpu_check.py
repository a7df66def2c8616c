"""The prepared GPU check: CUDA correctness, a streamed training run, an analysis run and the speed benchmarks,
written as one JSON and one markdown table (the README's GPU tables come from it).

    bash bench/gpu_check.sh                                        # on a CUDA machine, under 8 minutes
    python bench/gpu_check.py --tiny --device=cpu --out=/tmp/gc    # CI: tiny configs on CPU (tests/test_gpu_check.py)
    python bench/gpu_check.py --sections=dust3r,sae                # some sections only

Sections, in order, each with its own time budget (BUDGETS, seconds on the GPU); a section that fails or
runs out of time is recorded with its status and the end of its error output, and the next one runs:
  correctness  golden configs of tests/fixtures/golden (official DUSt3R's tensors, tiny random-weight models,
               both heads, landscape/portrait/ManyAR): fp32 on the device against the official tensors within
               the golden tests' tolerances, and bf16 autocast against fp32 within BF16_TOL
  train        train_encoder_sae.py end to end with tiny overrides: streamed DUSt3R tokens, SAE steps,
               held-out evals with the spliced 3D fidelity, checkpoint, saved SAE
  analysis     analyze_results.py on that run ((A, B), (B, A), (A, A) passes, metrics, figures, browser)
  dust3r       bench/bench_dust3r.py: 224_linear and 512_dpt, full and encoder-only, bf16 and fp32,
               eager and torch.compile: pairs/s, peak memory, MFU (one subprocess per config)
  sae          bench/bench_sae.py: SAE training steps at the real sizes (bf16 autocast)
  pipeline     bench/bench_pipeline.py: the streamed pipeline (data, DUSt3R, SAE) for an encoder and a decoder hook
Outputs in --out: gpu_check.json (everything, per section) and gpu_check.md (the tables).
`--tiny` swaps every config for a tiny one (seconds each, numbers meaningless) so that CI runs the
same code on a CPU and the check cannot rot.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # models/, data/ as top-level packages when run as a file
# seconds per section on the GPU (sum 480 = 8 min); the first DUSt3R configs finish in ~15 s each, compiled
# ones need ~30-90 s of compilation, so the section runs its configs by priority and skips what no longer fits
BUDGETS = dict(correctness=35, train=70, analysis=55, dust3r=215, sae=45, pipeline=60)
TINY_BUDGET = 600             # per section with --tiny: the CI machine is small and shared; never meant to bind
BF16_TOL = 0.05               # bf16 vs fp32: max |bf16 - fp32| / max |fp32| per tensor. bf16 keeps 8 bits (2^-8 = 0.4%
                              # per rounding); CPU bf16 autocast measures <= 0.025 on all six cases, so 2x margin
MIN_CONFIG_S = 12             # a DUSt3R config is not started with less section time left than this
GOLDEN_CASES = {"linear": ["landscape_b2", "portrait_view2", "manyar_portrait_view2"],
                "dpt": ["landscape_b1", "portrait_view2", "manyar_portrait_view2"]}


class SectionTimeout(Exception):
    pass


def run_cmd(cmd, timeout, log=None):
    """Run cmd in ROOT in its own process group; the whole group is killed when the timeout expires
    (benchmarks start subprocesses and DataLoader workers of their own). -> stdout; raises on failure."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, stdout=out, stderr=err, text=True, env=env,
                                start_new_session=True)
        try:
            proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            err.seek(0)
            name = Path(str(cmd[1])).name
            raise SectionTimeout(f"{name} killed after {timeout:.0f} s\n{err.read()[-1500:]}") from None
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if log:
        Path(log).write_text(stdout + "\n--- stderr ---\n" + stderr)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd[:3]))} ... exited {proc.returncode}\n{stderr[-3000:]}")
    return stdout


def run_section(name, fn, budget):
    """-> record {status: ok | failed | timeout, seconds, budget_s, result | error}; never raises."""
    t0 = time.time()
    rec = dict(budget_s=budget)
    try:
        rec.update(status="ok", result=fn(t0 + budget))
    except SectionTimeout as e:
        rec.update(status="timeout", error=str(e)[-3000:])
    except Exception as e:  # noqa: BLE001  (a failing section is recorded, the check goes on)
        rec.update(status="failed", error=f"{type(e).__name__}: {e}"[-3000:])
    rec["seconds"] = round(time.time() - t0, 1)
    print(f"[gpu_check] {name}: {rec['status']} in {rec['seconds']:.0f} s (budget {budget} s)", flush=True)
    if rec["status"] != "ok":
        print(rec["error"][-1500:], flush=True)
    return rec


def left(deadline):
    return deadline - time.time()


# ------------------------------------------------------------------------------------------------ correctness

def golden_check(device, tiny):
    """Runs in a child process. Per golden case: fp32 on `device` vs the official tensors, bf16 autocast vs fp32."""
    import argparse as ap_
    import torch

    from models.loading import load_dust3r
    sys.path.insert(0, str(ROOT / "tests"))
    # the golden weights rule and tolerances live with the golden tests; one copy of them
    from test_dust3r import GOLDEN, OUTPUT_TOL, TOKENS_TOL, golden_name, load_case, synth_tensor
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (the golden tensors are fp32 CPU)
    torch.backends.cudnn.allow_tf32 = False
    tmp = tempfile.mkdtemp()
    manifest = json.loads((GOLDEN / "dpt/weights_manifest.json").read_text())
    dpt_state = {k: synth_tensor("dust3r-golden/shared/dpt", k, v["shape"]) for k, v in manifest.items()}
    raw = (GOLDEN / "dpt/model_args.txt").read_text().splitlines()[1]
    torch.save({"model": dpt_state, "args": ap_.Namespace(model=raw)}, f"{tmp}/dpt.pth")
    checkpoints = {"linear": GOLDEN / "linear/checkpoint.pth", "dpt": f"{tmp}/dpt.pth"}
    rows = []
    for config, cases in GOLDEN_CASES.items():
        for case in cases[:1] if tiny else cases:
            model = load_dust3r(checkpoints[config], device=device, landscape_only=case.startswith("manyar"))
            views, exp = load_case(config, case)
            views = [{k: v.to(device) for k, v in view.items()} for view in views]
            points = [h for h in model.hook_points if golden_name(h, 1) in exp or golden_name(h, 2) in exp]

            def forward(bf16):
                with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                    res1, res2 = model(*views)
                    toks = model.forward_hooks(*views, points).tokens
                out = {golden_name(h, v + 1): t.float().cpu() for h, pair in toks.items() for v, t in enumerate(pair)
                       if t is not None}
                out.update({"view1.pts3d": res1["pts3d"], "view1.conf": res1["conf"], "view2.conf": res2["conf"],
                            "view2.pts3d_in_other_view": res2["pts3d_in_other_view"]})
                return {k: v.float().cpu() for k, v in out.items()}

            f32, b16 = forward(False), forward(True)
            unchecked = [k for k in exp if k not in f32 and not k.endswith((".pos", "head_proj", "head_raw"))]
            assert not unchecked, f"golden tensors not compared: {unchecked}"
            outputs = [k for k in f32 if "pts3d" in k or k.endswith("conf")]
            excess = {k: float(((f32[k] - exp[k]).abs() - (tol["atol"] + tol["rtol"] * exp[k].abs())).max())
                      for k in f32 for tol in [OUTPUT_TOL if k in outputs else TOKENS_TOL]}  # > 0: out of tolerance
            rel = {k: float((b16[k] - f32[k]).abs().max() / f32[k].abs().max().clamp_min(1e-12)) for k in f32}
            worst = max(rel, key=rel.get)
            rows.append(dict(
                config=config, case=case, tensors=len(f32),
                fp32_max_abs_err_tokens=max(float((f32[k] - exp[k]).abs().max()) for k in f32 if k not in outputs),
                fp32_max_abs_err_outputs=max(float((f32[k] - exp[k]).abs().max()) for k in outputs),
                fp32_ok=max(excess.values()) <= 0, bf16_max_rel_err=rel[worst], bf16_worst_tensor=worst,
                bf16_max_rel_err_outputs=max(rel[k] for k in outputs), bf16_ok=rel[worst] <= BF16_TOL))
    shutil.rmtree(tmp, ignore_errors=True)
    reuse = reuse_check(device)
    return dict(tokens_tol=TOKENS_TOL, outputs_tol=OUTPUT_TOL, bf16_tol=BF16_TOL, cases=rows, encoder_reuse=reuse,
                all_ok=all(r["fp32_ok"] and r["bf16_ok"] for r in rows) and all(r["identical"] for r in reuse))


def reuse_check(device):
    """The analysis' shared encoder pass (analysis/pairings.py) against three forwards on `device`, under the
    scripts' autocast: identical tokens, grids and outputs expected (same batches, same kernels)."""
    import torch

    from analysis.pairings import pairing_tokens
    from models.loading import load_dust3r
    model = load_dust3r("random-tiny", device, landscape_only=True)
    g = torch.Generator().manual_seed(0)
    views = [dict(img=torch.rand(4, 3, 64, 96, generator=g) * 2 - 1, true_shape=torch.tensor([[64, 96]] * 4))
             for _ in range(2)]
    rows = []
    for hooks in (("enc_blocks.1", "enc_blocks.1"), ("dec_blocks.1", "dec_blocks2.1")):
        (got, res), (ref, res_ref) = (pairing_tokens(model, *views, hooks, controls=True, device=torch.device(device),
                                                     reuse=r) for r in (True, False))
        pairs = [(a, b) for p in got for a, b in zip(got[p], ref[p])] + [
            (a[k], b[k]) for a, b in zip(res, res_ref) for k in a]
        rows.append(dict(hooks=hooks, max_abs_diff=max(float((a.float() - b.float()).abs().max()) for a, b in pairs),
                         identical=all(torch.equal(a, b) for a, b in pairs)))
    return rows


def section_correctness(args, deadline):
    flags = ["--golden_child", args.device] + (["--tiny"] if args.tiny else [])
    out = run_cmd([sys.executable, __file__, *flags], left(deadline), args.out / "logs" / "correctness.log")
    res = json.loads(next(x for x in out.splitlines() if x.startswith("RESULT "))[7:])
    if not res["all_ok"]:
        bad = [f"{r['config']}/{r['case']}" for r in res["cases"] if not (r["fp32_ok"] and r["bf16_ok"])]
        raise AssertionError(f"out of tolerance: {bad}\n{json.dumps(res['cases'], indent=1)}")
    return res


# ------------------------------------------------------------------------------------------------ train, analysis

def train_overrides(args):
    if args.tiny:  # the end-to-end test's tiny run (tests/test_analysis_e2e.py), with the fidelity evals on
        return ["--checkpoint=random-tiny", "--resolution=96", "--train_tokens=2048", "--batch_size=512",
                "--buffer_pairs=8", "--dust3r_batch=4", "--eval_pairs=4", "--eval_every=2", "--num_workers=0",
                "--expansion=4", "--k=4", "--init_tokens=512"]
    workers = max(1, min(12, (os.cpu_count() or 2) - 2))  # the built-in scenes render on the CPU
    return ["--checkpoint=random-224", "--train_tokens=163840", "--batch_size=16384", "--buffer_pairs=128",
            "--dust3r_batch=32", "--eval_pairs=32", "--eval_every=5", "--init_tokens=16384", f"--num_workers={workers}"]


def section_train(args, deadline):
    run_dir = args.out / "train" / "gc-enc"
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, not a resume of an earlier check
    t0 = time.time()
    run_cmd([sys.executable, "train_encoder_sae.py", *train_overrides(args), f"--out_dir={run_dir.parent}",
             "--run_name=gc-enc", f"--device={args.device}", "--log_every=1"],
            left(deadline), args.out / "logs" / "train.log")
    wall = time.time() - t0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    if not (run_dir / "sae.safetensors").exists() or not evals:
        raise AssertionError(f"{run_dir}: no saved SAE or no eval record")
    last = evals[-1]
    return dict(run_dir=str(run_dir), wall_s=wall, steps=train[-1]["step"], tokens=train[-1]["tokens"],
                tokens_per_s_last=train[-1]["tokens_per_s"], evals=len(evals),
                **{k: last.get(k) for k in ("fvu", "l0", "score_vs_clean", "L_clean_vs_clean", "L_sae_vs_clean",
                                            "L_ablate_vs_clean", "score_vs_gt")})


def section_analysis(args, deadline):
    run_dir = args.out / "train" / "gc-enc"
    if not (run_dir / "sae.safetensors").exists():
        raise FileNotFoundError(f"{run_dir}: no trained SAE (the train section failed)")
    flags = (["--n_pairs=8", "--n_max=200", "--min_support=5", "--n_cards=4", "--n_ply=1", "--batch_size=4"]
             if args.tiny else ["--n_pairs=64", "--batch_size=16", "--n_cards=8", "--n_ply=2"])
    t0 = time.time()
    run_cmd([sys.executable, "analyze_results.py", run_dir, *flags, f"--device={args.device}"],
            left(deadline), args.out / "logs" / "analysis.log")
    res = json.loads((run_dir / "analysis.json").read_text())
    for f in ("index.html", "summary.md", "latent_metrics.json"):
        if not (run_dir / f).exists():
            raise FileNotFoundError(run_dir / f)
    anchor = res["info"].get("jaccard_identical_mass_weighted")
    return dict(wall_s=time.time() - t0, analysis_s=res["seconds"], n_pairs=res["summary"]["n_pairs"],
                n_alive=res["summary"]["n_alive"], identical_pair_consistency=anchor,
                identical_pair_anchor_ok=anchor is not None and abs(anchor - 1) < 1e-3)  # encoder hook: (A, A) gives 1


# ------------------------------------------------------------------------------------------------ benchmarks

def dust3r_configs(args):
    """In priority order: eager bf16 (the training/analysis setting), eager fp32, compiled bf16, compiled fp32."""
    if args.tiny:  # CPU: eager fp32 and dynamo tracing ('eager' backend: no C++ compiler needed)
        return [dict(arch="tiny_linear", mode="full", dtype="fp32", compile="none"),
                dict(arch="tiny_linear", mode="encoder", dtype="fp32", compile="eager")]
    return [dict(arch=arch, mode=mode, dtype=dtype, compile=comp)
            for comp in ("none", "inductor") for dtype in ("bf16", "fp32")
            for arch in ("224_linear", "512_dpt") for mode in ("full", "encoder")]


def section_dust3r(args, deadline):
    rows, errors, skipped = [], [], []
    for i, cfg in enumerate(dust3r_configs(args)):
        tag = f"{cfg['arch']}-{cfg['mode']}-{cfg['dtype']}-{cfg['compile']}"
        if left(deadline) < (1 if args.tiny else MIN_CONFIG_S):
            skipped.append(tag)
            continue
        out = args.out / "logs" / f"dust3r_{tag}.json"
        try:
            run_cmd([sys.executable, "bench/bench_dust3r.py", "--arch", cfg["arch"], "--mode", cfg["mode"],
                     "--dtype", cfg["dtype"], "--compile", cfg["compile"], "--device", args.device,
                     "--batch", 1 if args.tiny else 8, "--iters", 2 if args.tiny else 10, "--out", out],
                    left(deadline), args.out / "logs" / f"dust3r_{tag}.log")
            rows += json.loads(out.read_text())
        except (RuntimeError, SectionTimeout) as e:  # one config failing leaves the others standing
            errors.append(f"{tag}: {str(e)[-800:]}")
    if not rows:
        raise RuntimeError("no DUSt3R config ran\n" + "\n".join(errors))
    return dict(rows=rows, errors=errors, skipped_for_time=skipped)


def section_sae(args, deadline):
    out = args.out / "logs" / "bench_sae.json"
    flags = (["--device=cpu", "--dims=32", "--expansion=4", "--batch=256", "--steps=2", "--variants=topk,batchtopk"]
             if args.tiny else [f"--device={args.device}", "--bf16", "--steps=20"])
    run_cmd([sys.executable, "-m", "bench.bench_sae", *flags, "--out", out], left(deadline),
            args.out / "logs" / "bench_sae.log")
    return json.loads(out.read_text())


def section_pipeline(args, deadline):
    out = args.out / "logs" / "bench_pipeline.json"
    workers = max(1, min(12, (os.cpu_count() or 2) - 2))
    flags = (["--checkpoint=random-tiny", "--pairs=4", "--buffer_pairs=4", "--dust3r_batch=2", "--batch_size=256",
              "--num_workers=0", "--expansion=4", "--k=4", "--decoder_hook=dec_blocks*.1"] if args.tiny else
             ["--pairs=256", "--buffer_pairs=128", "--dust3r_batch=32", "--batch_size=16384",
              f"--num_workers={workers}"])
    run_cmd([sys.executable, "-m", "bench.bench_pipeline", f"--device={args.device}", *flags, "--out", out],
            left(deadline), args.out / "logs" / "bench_pipeline.log")
    return json.loads(out.read_text())


SECTIONS = dict(correctness=section_correctness, train=section_train, analysis=section_analysis,
                dust3r=section_dust3r, sae=section_sae, pipeline=section_pipeline)


# ------------------------------------------------------------------------------------------------ report

def environment(device):
    import torch
    env = dict(date_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               host=platform.node(), cpu_count=os.cpu_count(), torch=torch.__version__, cuda=torch.version.cuda,
               python=platform.python_version(), device=device, loadavg_1min=os.getloadavg()[0])
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    env["git_commit"] = commit or "none"
    if device == "cuda" and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name()
        env["device_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        smi = shutil.which("nvidia-smi")
        if smi:
            q = subprocess.run([smi, "--query-gpu=driver_version,power.limit,clocks.max.sm", "--format=csv,noheader"],
                               capture_output=True, text=True)
            env["nvidia_smi"] = q.stdout.strip()
    return env


def fmt(v, spec=".3g"):
    return "-" if v is None else (format(v, spec) if isinstance(v, float) else str(v))


def md_correctness(res):
    tol = lambda t: f"rtol {t['rtol']:g}, atol {t['atol']:g}"  # noqa: E731
    return [f"Golden configs, fp32 on the device vs the official tensors (tokens {tol(res['tokens_tol'])}; outputs "
            f"{tol(res['outputs_tol'])}) and bf16 autocast vs fp32 (max |diff| / max |fp32| <= {res['bf16_tol']}):", "",
            "| config | case | fp32 max abs err tokens / outputs | fp32 ok | bf16 max rel err (tensor) | "
            "bf16 max rel err outputs | bf16 ok |", "|---|---|---|---|---|---|---|"] + [
        f"| {r['config']} | {r['case']} | {r['fp32_max_abs_err_tokens']:.2e} / {r['fp32_max_abs_err_outputs']:.2e} | "
        f"{r['fp32_ok']} | {r['bf16_max_rel_err']:.2e} ({r['bf16_worst_tensor']}) | "
        f"{r['bf16_max_rel_err_outputs']:.2e} | "
        f"{r['bf16_ok']} |" for r in res["cases"]] + md_reuse(res)


def md_reuse(res):
    return ["", "Shared encoder pass of the analysis vs three forwards (random-tiny, autocast): " + "; ".join(
        f"{r['hooks'][0]}: {'identical' if r['identical'] else 'max abs diff ' + format(r['max_abs_diff'], '.2e')}"
        for r in res["encoder_reuse"]) + "."]


def md_train(r):
    return [f"Training run (train_encoder_sae.py, {r['steps']} steps, {r['tokens']} tokens, {r['evals']} evals): "
            f"{r['wall_s']:.1f} s wall, {fmt(r['tokens_per_s_last'], '.0f')} tokens/s at the last step; eval FVU "
            f"{fmt(r['fvu'])}, L0 {fmt(r['l0'])}, fidelity score vs clean {fmt(r['score_vs_clean'])} (random weights: "
            "the score is noise, see README)."]


def md_analysis(r):
    return [f"Analysis (analyze_results.py, {r['n_pairs']} pairs): {r['analysis_s']:.1f} s; (A, A) consistency "
            f"{fmt(r['identical_pair_consistency'], '.6f')} (encoder hook: must be 1)."]


def md_dust3r(r):
    mfu = lambda x: f"{100 * x['mfu']:.1f}%" if x.get("mfu") else "-"  # noqa: E731
    lines = ["| model | mode | dtype | compile | batch | pairs/s | ms / pair | TFLOP / pair | TFLOP/s | MFU | "
             "peak mem GiB | first call s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {x['arch']} | {x['mode']} | {x['dtype']} | {x['compile']} | {x['batch']} | {x['pairs_per_s']:.2f} | "
              f"{1000 * x['s_per_batch'] / x['batch']:.1f} | {x['tflop_per_pair']:.3f} | {x['tflops_achieved']:.1f} | "
              f"{mfu(x)} | {x['peak_mem_gib']:.2f} | {x['first_call_s']:.1f} |" for x in r["rows"]]
    if r["skipped_for_time"] or r["errors"]:
        lines += ["", f"Skipped for time: {r['skipped_for_time'] or 'none'}; failed: "
                  f"{[e.split(':')[0] for e in r['errors']] or 'none'}."]
    return lines


def md_sae(r):
    return ["| SAE d -> latents | variant | batch | bf16 | ms / step | tokens/s |", "|---|---|---|---|---|---|"] + [
        f"| {x['d_in']} -> {x['n_latents']} | {x['variant']} | {x['batch']} | {x['bf16']} | {x['ms_per_step']:.2f} | "
        f"{x['tokens_per_s']:.0f} |" for x in r["results"]]


def md_pipeline(r):
    return ["| pipeline side | hook | pairs/s | SAE tokens/s | data / DUSt3R / SAE share | DUSt3R alone pairs/s |",
            "|---|---|---|---|---|---|"] + [
        f"| {x['side']} | `{x['hook']}` | {x['pairs_per_s']:.2f} | {x['tokens_per_s']:.0f} | "
        f"{x['share']['data']:.0%} / {x['share']['dust3r']:.0%} / {x['share']['sae']:.0%} | "
        f"{x['dust3r_pairs_per_s']:.2f} |" for x in r["runs"]]


MARKDOWN = dict(correctness=md_correctness, train=md_train, analysis=md_analysis, dust3r=md_dust3r, sae=md_sae,
                pipeline=md_pipeline)


def markdown(report):
    env, sec = report["environment"], report["sections"]
    lines = [f"# gpu_check{' (--tiny: CI configs, numbers meaningless)' if report['tiny'] else ''}", "",
             f"{env.get('device_name', env['device'])}, torch {env['torch']} (CUDA {env['cuda']}), "
             f"{env['cpu_count']} CPU cores, commit {env['git_commit'][:10]}, {env['date_utc']}; "
             f"command `{report['command']}`", "",
             "| section | status | seconds | budget s |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['status']} | {v['seconds']:.0f} | {v['budget_s']} |" for k, v in sec.items()]
    for name, v in sec.items():
        if v["status"] == "ok":
            lines += [""] + MARKDOWN[name](v["result"])
    failed = [k for k, v in sec.items() if v["status"] != "ok"]
    if failed:
        lines += ["", "Errors (last line of each; full logs in logs/):", ""]
        lines += [f"- {k}: `{(sec[k]['error'].strip().splitlines() or [''])[-1][:300]}`" for k in failed]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny configs (CI on CPU): seconds per section")
    p.add_argument("--device", default="auto", help="auto (cuda if present) | cuda | cpu")
    p.add_argument("--out", default=str(ROOT / "results" / "gpu_check"), help="output folder")
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of " + ",".join(SECTIONS))
    p.add_argument("--golden_child", default=None, help=argparse.SUPPRESS)  # internal: the correctness child
    args = p.parse_args()
    if args.golden_child:
        print("RESULT " + json.dumps(golden_check(args.golden_child, args.tiny)))
        return
    import torch
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cpu" and not args.tiny:
        p.error("no CUDA device: the full check is for a GPU; use --tiny for the CPU (CI) mode")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device=cuda but torch sees no CUDA device")
    names = [s for s in args.sections.split(",") if s]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown:
        p.error(f"--sections: unknown {unknown}; choose from {list(SECTIONS)}")
    args.out = Path(args.out).resolve()
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    report = dict(tiny=args.tiny, command=" ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
                  environment=environment(args.device), sections={})
    t0 = time.time()
    for name in names:
        budget = TINY_BUDGET if args.tiny else BUDGETS[name]
        report["sections"][name] = run_section(name, lambda deadline, f=SECTIONS[name]: f(args, deadline), budget)
    report["total_s"] = round(time.time() - t0, 1)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    (args.out / "gpu_check.md").write_text(markdown(report))
    print(f"[gpu_check] {report['total_s']:.0f} s; wrote {args.out}/gpu_check.json and gpu_check.md")
    sys.exit(0 if all(s["status"] == "ok" for s in report["sections"].values()) else 1)


if __name__ == "__main__":
    main()
