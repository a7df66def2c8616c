"""User errors in the training scripts: one line naming the setting or file, exit status 2, no traceback
(--debug=True shows it), rejected before any model is loaded, and nothing written: no stub folder for a
failed start, every file of an existing run unchanged by a refused rerun."""
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--checkpoint=random-tiny", "--train_tokens=1536", "--batch_size=256", "--buffer_pairs=4", "--dust3r_batch=2",
        "--eval_pairs=2", "--eval_every=6", "--num_workers=0", "--k=4", "--expansion=4", "--fidelity=False"]


def run(script, out_dir, *args, env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO, **(env or {})}
    return subprocess.run([sys.executable, script, *TINY, f"--out_dir={out_dir}", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_user_error(proc, *words):
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: "), proc.stderr[-3000:]
    for w in words:
        assert w in proc.stderr, (w, proc.stderr)


@pytest.mark.parametrize("script, args, words", [
    ("train_encoder_sae.py", ["--batch_size=0"], ["batch_size=0", "positive"]),
    ("train_encoder_sae.py", ["--expansion=0"], ["expansion=0", "positive"]),
    ("train_decoder_sae.py", ["--k=-1"], ["k=-1"]),
    ("train_encoder_sae.py", ["--train_tokens=100", "--batch_size=1024"], ["train_tokens=100", "batch_size (1024)"]),
    ("train_encoder_sae.py", ["--dust3r_batch=3"], ["dust3r_batch=3", "buffer_pairs"]),
    ("train_encoder_sae.py", ["--learning_rate=1"], ["unknown config key 'learning_rate'"]),
    ("train_decoder_sae.py", ["--k=four"], ["'k' expects int"]),
    ("train_encoder_sae.py", ["missing.yaml"], ["missing.yaml", "no such config file"]),
    ("train_encoder_sae.py", ["--hook=enc_blocks.7"], ["enc_blocks.7", "not in this model"]),  # after the model loads
    ("train_decoder_sae.py", ["--checkpoint=/nonexistent/model.pth"], ["/nonexistent/model.pth"]),
])
def test_bad_values_are_one_clear_line_and_leave_no_folder(tmp_path, script, args, words):
    proc = run(script, tmp_path / "results", *args, "--run_name=x")
    assert_user_error(proc, *words)
    assert not (tmp_path / "results").exists()  # no stub run folder


def test_bad_yaml_file(tmp_path):
    bad = tmp_path / "sweep.yaml"
    bad.write_text("k: [4\nlr: 1e-3\n")
    assert_user_error(run("train_encoder_sae.py", tmp_path / "results", str(bad)), str(bad), "not valid YAML")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu_is_a_user_error(tmp_path):
    assert_user_error(run("train_encoder_sae.py", tmp_path / "results", "--device=cuda"), "device='cuda'",
                      "--device=cpu")


def test_debug_shows_the_traceback(tmp_path):
    proc = run("train_encoder_sae.py", tmp_path / "results", "--batch_size=0", "--debug=True")
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "batch_size=0" in proc.stderr
    proc = run("train_encoder_sae.py", tmp_path / "results", "--batch_size=0", env={"SAE_DEBUG": "1"})
    assert proc.returncode == 1 and "Traceback" in proc.stderr


def snapshot(folder):
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            p = os.path.join(root, name)
            st = os.stat(p)
            out[os.path.relpath(p, folder)] = (open(p, "rb").read(), st.st_mtime_ns, st.st_mode)
    return out


@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    proc = run("train_encoder_sae.py", out, "--run_name=r")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "r"


def test_refused_rerun_changes_no_file(done_run):
    before = snapshot(done_run)
    proc = run("train_encoder_sae.py", done_run.parent, "--run_name=r", "--k=8")
    assert_user_error(proc, "cannot resume with a different config", "k: 4 -> 8", "--run_name")
    assert snapshot(done_run) == before


def test_run_files_have_one_mode(done_run):
    modes = {name: mode & 0o777 for name, (_, _, mode) in snapshot(done_run).items()}
    assert len(set(modes.values())) == 1, modes  # sae.safetensors like config.yaml (0644 under umask 022)


# ------------------------------------------------------------------------------------------------
# analyze_results.py

ANALYZE = ["--n_pairs=4", "--n_max=20", "--min_support=1", "--n_cards=2", "--n_ply=1", "--batch_size=4"]


def analyze(*args, env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO, **(env or {})}
    return subprocess.run([sys.executable, "analyze_results.py", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


def test_analysis_help_describes_the_run_folder_argument():
    proc = analyze("--help")
    assert proc.returncode == 0 and "usage: python analyze_results.py RUN_FOLDER" in proc.stdout
    assert "Analyse trained SAE runs" in proc.stdout and "n_pairs = 128" in proc.stdout


@pytest.mark.parametrize("args, words", [
    ([], ["RUN_FOLDER", "at least one training run folder"]),
    (["{run}", "--n_pairs=0"], ["n_pairs=0", "positive"]),
    (["{run}", "--min_support=0"], ["min_support=0"]),
    (["/nonexistent/run"], ["/nonexistent/run", "expected a training run folder"]),
])
def test_analysis_bad_values_are_one_clear_line(done_run, args, words):
    before = snapshot(done_run)
    assert_user_error(analyze(*[a.format(run=done_run) for a in args]), *words)
    assert snapshot(done_run) == before


def test_analysis_refuses_a_config_that_does_not_describe_the_sae(done_run, tmp_path):
    """The issue's case: config.yaml says k=8 (rewritten by a refused rerun) but the SAE was trained with k=4."""
    import shutil
    run = tmp_path / "r"
    shutil.copytree(done_run, run)
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text.replace("\nk: 4\n", "\nk: 8\n"))
    before = snapshot(run)
    assert_user_error(analyze(str(run), *ANALYZE), "refused", "k: 8 in config.yaml vs 4 in sae_config.json",
                      "checkpoint/state.json")
    assert snapshot(run) == before


def test_default_num_workers_fits_the_machine():
    """The default must not make DataLoader warn about more workers than CPUs (a 2-core machine)."""
    proc = subprocess.run([sys.executable, "train_encoder_sae.py", "--help"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": REPO}, timeout=120)
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.strip().startswith("num_workers = ")]
    assert 1 <= int(line.split("=")[1]) <= min(4, os.cpu_count())
