"""Fault injection: `kill -9` at random moments of training and of activation caching (child processes,
several seeds), then the same command again until it completes: the final SAE weights, the cache shards and
metrics.jsonl's records equal those of an uninterrupted run, with no duplicate rows. The kill moment is drawn
uniformly over the uninterrupted run's wall time, so it lands in start-up, buffer filling, steps, evals or
checkpoint writes."""
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 16 steps of 128 tokens, checkpoints every 3 steps, an eval every 5: many distinct places to die in
TINY = ["--checkpoint=random-tiny", "--train_tokens=2048", "--batch_size=128", "--buffer_pairs=4", "--dust3r_batch=2",
        "--eval_pairs=2", "--eval_every=5", "--num_workers=0", "--log_every=2", "--k=4", "--expansion=4",
        "--ckpt_every=3", "--fidelity=False"]
SEEDS = (0, 1, 2)

pytestmark = pytest.mark.slow


def command(out_dir, *args):
    return [sys.executable, "train_encoder_sae.py", *TINY, f"--out_dir={out_dir}", "--run_name=r", *args]


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}


def complete(cmd):
    proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def killed(cmd, after_s):
    """Start cmd and SIGKILL it (and nothing else) after `after_s` seconds, unless it finished already."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=after_s)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def records(run_dir):
    """(kind, step, values) of the train and eval records, without wall-clock fields."""
    out = []
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for r in map(json.loads, f):
            if r["kind"] in ("train", "eval"):
                out.append((r["kind"], r["step"], {k: v for k, v in r.items() if k != "tokens_per_s"}))
    return out


def weights(run_dir):
    return load_file(os.path.join(run_dir, "sae.safetensors"))


def assert_same_run(run_dir, ref_dir, what):
    a, b = weights(run_dir), weights(ref_dir)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{what}: {key} differs by {(a[key] - b[key]).abs().max().item()}"
    got, want = records(run_dir), records(ref_dir)
    keys = [(kind, step) for kind, step, _ in got]
    assert len(keys) == len(set(keys)), f"{what}: duplicate rows in metrics.jsonl"
    assert keys == [(kind, step) for kind, step, _ in want], what
    for (_, _, g), (_, _, w) in zip(got, want):
        np.testing.assert_allclose([g[k] for k in sorted(w) if isinstance(w[k], float)],
                                   [w[k] for k in sorted(w) if isinstance(w[k], float)], rtol=1e-6, err_msg=what)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, background):
    """Uninterrupted runs (streamed, and from a cache) and their wall times."""
    concurrent.futures.wait(background.values())  # measured with the machine as the kills will find it: no second lane
    out = tmp_path_factory.mktemp("ref")
    times = {}
    for name, extra in (("stream", []), ("cache", ["--cache=True", f"--cache_dir={out / 'tokens'}"])):
        t0 = time.time()
        complete(command(out / name, *extra))
        times[name] = time.time() - t0
    return out, times


@pytest.mark.parametrize("seed", SEEDS)
def test_kill9_during_training_then_rerun_equals_uninterrupted(reference, tmp_path, seed):
    ref, times = reference
    rng = np.random.default_rng(seed)
    cmd = command(tmp_path)
    for after in rng.uniform(0.1, 1.0, size=2) * times["stream"]:  # two kills, then a complete rerun
        killed(cmd, after)
    complete(cmd)
    assert_same_run(tmp_path / "r", ref / "stream" / "r", f"seed {seed}")


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_kill9_during_caching_then_rerun_equals_uninterrupted(reference, tmp_path, seed):
    ref, times = reference
    rng = np.random.default_rng(100 + seed)
    cmd = command(tmp_path, "--cache=True", f"--cache_dir={tmp_path / 'cache'}")
    killed(cmd, rng.uniform(0.1, 0.7) * times["cache"])  # early: during model load or cache writing
    complete(cmd)
    assert_same_run(tmp_path / "r", ref / "cache" / "r", f"seed {seed}")
    (key,) = os.listdir(ref / "tokens")
    want = sorted(os.listdir(ref / "tokens" / key))
    got = sorted(n for n in os.listdir(tmp_path / "cache" / key) if ".tmp" not in n)  # a killed write's temp file
    assert got == want
    for name in want:
        assert (tmp_path / "cache" / key / name).read_bytes() == (ref / "tokens" / key / name).read_bytes()


# ------------------------------------------------------------------------------------------------
# analysis: outputs are staged and published together (analyze_results.publish)

ANALYZE = ["--n_pairs=6", "--n_max=20", "--min_support=1", "--n_ply=1", "--batch_size=2"]


def analyze(run_dir, *args):
    return [sys.executable, "analyze_results.py", str(run_dir), *ANALYZE, *args]


def outputs(run_dir):
    """{relative path: bytes} of the analysis outputs (analysis.json without its wall time)."""
    out = {}
    for root, _, files in os.walk(run_dir):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), run_dir)
            if rel.split(os.sep)[0] in ("figures", "latents") or name in (
                    "latent_metrics.json", "summary.md", "index.html", "analysis.json"):
                data = open(os.path.join(root, name), "rb").read()
                if name == "analysis.json":
                    data = json.dumps({k: v for k, v in json.loads(data).items() if k != "seconds"}).encode()
                out[rel] = data
    return out


@pytest.fixture(scope="module")
def analysed(reference, tmp_path_factory):
    """A run analysed once with 1 card (the 'old' outputs), and a copy analysed with 3 cards ('new')."""
    import shutil
    ref, _ = reference
    out = tmp_path_factory.mktemp("analysed")
    old = shutil.copytree(ref / "stream" / "r", out / "old" / "r")  # one folder name: the run's name is in the outputs
    complete(analyze(old, "--n_cards=1"))
    new = shutil.copytree(old, out / "new" / "r")
    t0 = time.time()
    complete(analyze(new, "--n_cards=3"))
    return old, new, time.time() - t0


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_kill9_during_analysis_leaves_old_or_new_then_rerun_equals_uninterrupted(analysed, tmp_path, seed):
    import shutil
    old, new, seconds = analysed
    run = shutil.copytree(old, tmp_path / "r")
    killed(analyze(run, "--n_cards=3"), np.random.default_rng(200 + seed).uniform(0.2, 1.0) * seconds)
    if not os.path.exists(os.path.join(run, ".analysis.old")):  # not cut inside the publish's few renames
        assert outputs(run) in (outputs(old), outputs(new)), "a mix of old and new outputs"
    complete(analyze(run, "--n_cards=3"))
    assert outputs(run) == outputs(new)
    assert not os.path.exists(os.path.join(run, ".analysis.tmp"))
