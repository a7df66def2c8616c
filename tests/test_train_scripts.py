"""Short runs of both training scripts (tiny random-weight DUSt3R, built-in scenes, 12 steps) through
subprocess: a complete run folder, a resumed run that continues exactly, the cache path, and DDP with
2 CPU processes (gloo) matching one process on the same data."""
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from data import make_dataset
from models.sae import FVU, SAE
from models.loading import load_dust3r
from training.evaluate import EvalSet
from training.hooks import hook_sources

pytestmark = pytest.mark.slow  # end-to-end runs of the scripts: deselect with -m 'not slow'

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 12 steps of 256 tokens = 8 pairs (2 buffers of 4 pairs); evals at steps 6 and 12; checkpoint every 5.
# aux_coeff=0 in the reference: AuxK's loss is normalised per rank's batch, so only without it is DDP
# exactly the one-process computation (with it, it differs at ~1e-4; see README.md, section Training SAEs)
TINY = ["--checkpoint=random-tiny", "--train_tokens=3072", "--batch_size=256", "--buffer_pairs=4", "--dust3r_batch=2",
        "--eval_pairs=2", "--eval_every=6", "--num_workers=0", "--log_every=3", "--k=4", "--expansion=4",
        "--ckpt_every=5"]


def run(script, out_dir, *args, nproc=1):
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                    "--standalone", f"--nproc_per_node={nproc}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    proc = subprocess.run(launcher + [script, *TINY, f"--out_dir={out_dir}", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def records(run_dir, kind):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


def max_diff(dir_a, dir_b):
    a, b = load_file(os.path.join(dir_a, "sae.safetensors")), load_file(os.path.join(dir_b, "sae.safetensors"))
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    run("train_encoder_sae.py", out, "--aux_coeff=0", "--run_name=ref")
    return out / "ref"


def test_encoder_run_folder_is_complete(ref):
    assert {"config.yaml", "log.txt", "metrics.jsonl", "sae.safetensors", "sae_config.json", "curves.png",
            "checkpoint"} <= set(os.listdir(ref))
    config = yaml.safe_load(open(ref / "config.yaml"))
    assert config["hook"] == "enc_norm" and config["train_tokens"] == 3072 and config["aux_coeff"] == 0.0
    head = open(ref / "log.txt").read().splitlines()
    assert head[0].startswith("git commit: ") and "dirty: " in head[0] and head[1].startswith("python ")
    assert head[2].startswith("device: cpu")
    assert [r["step"] for r in records(ref, "train")] == [3, 6, 9, 12]
    evals = records(ref, "eval")
    assert [r["step"] for r in evals] == [6, 12]
    for key in ("fvu", "l0", "dead_frac", "dense_frac", "density_counts", "score_vs_clean", "score_vs_gt"):
        assert key in evals[-1], key
    assert evals[-1]["l0"] == pytest.approx(4.0)  # TopK: exactly k per token
    assert json.load(open(ref / "checkpoint" / "state.json"))["step"] == 12
    (data,) = records(ref, "data")  # unreadable-pair counts, the invocation's last record
    assert data == dict(kind="data", step=12, train_pairs=len(make_dataset("builtin", split="train")), train_bad_items=0,
                        val_pairs=len(make_dataset("builtin", split="val")), val_bad_items=0)
    log = open(ref / "log.txt").read()
    assert '\ndata train: {"dataset": ' in log and '"bad_items": 0' in log and "\ndata val: " in log
    lines = {line.split(":", 1)[0]: json.loads(line.split(": ", 1)[1]) for line in log.splitlines()
             if line.startswith(("data train: ", "data val: "))}
    assert lines["data train"]["geometry"] is False and lines["data val"]["geometry"] is True  # training: images only
    # the saved SAE acts on raw tokens: same FVU on the held-out tokens as the run's last eval
    sae = SAE.load(ref)
    assert (sae.cfg.d_in, sae.cfg.n_latents, sae.cfg.k) == (32, 128, 4)
    model = load_dust3r("random-tiny", torch.device("cpu"), landscape_only=True)
    ev = EvalSet.from_model(model, make_dataset("builtin", split="val"), sources=hook_sources("enc_norm", ("enc",)),
                            device=torch.device("cpu"), n_pairs=2, batch_size=2, fidelity=False)
    x = ev.tokens.reshape(-1, 32).float()
    fvu = FVU()
    fvu.update(x, sae.decode(sae.encode(x)))
    assert fvu.compute() == pytest.approx(evals[-1]["fvu"], rel=1e-4)


def test_resumed_run_continues_from_its_saved_step(ref, tmp_path):
    first = run("train_encoder_sae.py", tmp_path, "--aux_coeff=0", "--run_name=res", "--max_steps=4")
    run_dir = tmp_path / "res"
    assert "stopped at step 4 of 12" in first.stdout
    assert json.load(open(run_dir / "checkpoint" / "state.json"))["step"] == 4
    assert not (run_dir / "sae.safetensors").exists()
    run("train_encoder_sae.py", tmp_path, "--aux_coeff=0", "--run_name=res")
    assert f"resumed {run_dir} at step 4" in open(run_dir / "log.txt").read()
    assert [r["step"] for r in records(run_dir, "train")] == [3, 4, 6, 9, 12]
    assert [r["step"] for r in records(run_dir, "data")] == [4, 12]  # one per invocation
    assert max_diff(run_dir, ref) < 1e-6  # nothing lost, nothing repeated: the uninterrupted run's weights


def test_ddp_two_processes_match_one(ref, tmp_path):
    run("train_encoder_sae.py", tmp_path, "--aux_coeff=0", "--run_name=ddp", nproc=2)
    assert "world_size: 2" in open(tmp_path / "ddp" / "log.txt").read()
    assert max_diff(tmp_path / "ddp", ref) < 1e-5


def test_decoder_run_both_branches_from_cache(tmp_path):
    proc = run("train_decoder_sae.py", tmp_path, "--hook=dec_blocks*.1", "--cache=True",
               f"--cache_dir={tmp_path / 'cache'}")
    run_dir = tmp_path / "dec-dec_blocks_both.1-topk-k4-x4-builtin-s0".replace("_both", "both")
    assert {"config.yaml", "log.txt", "metrics.jsonl", "sae.safetensors", "sae_config.json", "curves.png"} <= set(
        os.listdir(run_dir)), proc.stdout[-2000:]
    (key,) = os.listdir(tmp_path / "cache")
    shards = sorted(os.listdir(tmp_path / "cache" / key))
    assert shards == ["meta.json", "shard_00000000_00000008.npy"]  # 3072 tokens / 392 per pair -> 8 pairs
    log = open(run_dir / "log.txt").read()
    assert "cache: " in log and '\ndata train: {"dataset": "builtin", "pairs": 288, "geometry": false' in log
    train, evals = records(run_dir, "train"), records(run_dir, "eval")
    assert {"l0_branch1", "l0_branch2"} <= set(train[-1])
    assert {"fvu_branch1", "fvu_branch2", "score_vs_clean"} <= set(evals[-1])
    assert SAE.load(run_dir).cfg.d_in == 32


def test_sigterm_checkpoints_at_a_step_boundary(tmp_path):
    """Preemption: SIGTERM finishes the current step, writes a checkpoint at it and exits with 130."""
    import signal
    import time
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    args = [a for a in TINY if not a.startswith("--train_tokens")] + ["--train_tokens=256000", "--log_every=1"]
    proc = subprocess.Popen([sys.executable, "train_encoder_sae.py", *args, f"--out_dir={tmp_path}", "--run_name=term"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "term" / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.read_text().strip()) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-2000:] + err[-2000:]
    step = json.load(open(tmp_path / "term" / "checkpoint" / "state.json"))["step"]
    assert 1 <= step < 1000 and step == records(tmp_path / "term", "train")[-1]["step"]  # logged every step
    assert f"stopped by a signal at step {step}" in open(tmp_path / "term" / "log.txt").read()
    assert records(tmp_path / "term", "data")[-1]["step"] == step
