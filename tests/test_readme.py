"""Every shell command in README.md runs: the ```bash blocks are parsed, and each command is run in README
order, in one temporary folder (so `results/<run>` and the analysis commands find the runs made before them),
with tiny overrides appended (later --key=value wins): a random-weight tiny DUSt3R, a few hundred tokens, a few
pairs. Only the lines in NOT_RUN are not run here, each for the reason given. A README command no rule covers
fails test_every_readme_command_has_a_rule, so new commands cannot slip through.

The benchmarks (BENCH) read nothing the other commands write and make no run folder, so they run in README order
in a second lane, alongside the training and analysis commands: every command runs on one thread
(OMP_NUM_THREADS=1), and the second core would otherwise sit idle."""
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = ["--checkpoint=random-tiny", "--train_tokens=1024", "--batch_size=256", "--buffer_pairs=4", "--dust3r_batch=2",
         "--eval_pairs=2", "--eval_every=2", "--num_workers=0", "--fidelity=False", "--init_tokens=512"]
ANALYZE = ["--n_pairs=4", "--n_max=20", "--min_support=1", "--n_cards=2", "--n_ply=1", "--batch_size=4"]
# --mode=probe: the tiny model (no download), hooks it has, the built-in scenes (no data download)
PROBE = ["--checkpoint=random-tiny", "--hooks=enc_norm,dec_blocks*.1", "--dataset=builtin", "--data_root=",
         "--probe_train_pairs=8", "--n_pairs=4", "--batch_size=4"]
BENCH = {"bench.bench_pipeline": ["--checkpoint=random-tiny", "--pairs=2", "--buffer_pairs=2", "--dust3r_batch=1",
                                  "--batch_size=64", "--expansion=2", "--k=4", "--num_workers=0",
                                  "--decoder_hook=dec_blocks*.1"],
         # the CI arch (as gpu_check.py --tiny); the full-size 224_linear encoder runs in bench_data.py's FLOP count
         "bench/bench_dust3r.py": ["--arch", "tiny_linear", "--mode", "encoder", "--iters", "1", "--device", "cpu"],
         "bench/bench_data.py": ["--datasets", "builtin", "--resolution", "224", "--pairs", "2", "--rounds", "1",
                                 "--batch", "2"],
         "bench/bench_forward.py": ["--size", "224", "--batch", "1", "--iters", "0"],
         "bench.bench_analysis": ["--checkpoint=random-tiny", "--hooks=enc_norm,dec_blocks*.1", "--rounds", "1"]}
NOT_RUN = {"pip install": "installs the requirements; .ci/run does it",
           "python -m pytest": "the test suite itself; .ci/run runs it",
           "git clone": "downloads naver's official code (network)",
           "bash bench/gpu_check.sh": "the GPU check script, for a GPU machine (tests/test_gpu_check.py runs its parts)"}


def readme_commands():
    """Shell commands of README.md's ```bash blocks: continuation lines joined, comments dropped."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            if line:
                out.append(line)
    return out


def plan(cmd):
    """-> (argv to run, reason not to run or None)."""
    for prefix, reason in NOT_RUN.items():
        if cmd.startswith(prefix):
            return None, reason
    argv = shlex.split(cmd)
    if "--official" in argv:
        return None, "compares with naver's official code checked out next to the repo (git clone, not run here)"
    if ("--device=cuda" in argv or "cuda" in argv) and not torch.cuda.is_available():
        return None, "needs a GPU (runs where one is present)"
    if argv[0] == "torchrun":  # any number of processes on the CI's CPU: 2, gloo
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] + [
            a for a in argv[1:] if not a.startswith("--nproc_per_node")] + ["--device=cpu"]
    elif argv[0] == "python":
        argv = [sys.executable] + argv[1:]
    else:
        raise AssertionError(f"README command with no rule: {cmd}")
    script = next(a for a in argv[1:] if a.endswith(".py") or a.startswith("bench."))
    i = argv.index(script)
    argv[i] = os.path.join(REPO, script) if script.endswith(".py") else script
    if script.startswith("train_"):
        extra = TRAIN + ([] if any(a.startswith("--hook=") for a in argv) or "encoder" in script
                         else ["--hook=dec_blocks*.1"])  # random-tiny has 2 decoder blocks
    elif script == "analyze_results.py":
        extra = PROBE if "--mode=probe" in argv else ANALYZE
    elif script in BENCH:
        extra = BENCH[script]
    else:
        raise AssertionError(f"README command with no rule: {cmd}")
    return argv + extra, None


COMMANDS = readme_commands()


def test_every_readme_command_has_a_rule():
    assert len(COMMANDS) >= 10
    for cmd in COMMANDS:
        plan(cmd)  # raises for a command no rule covers


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("readme")


def resolve_runs(argv, cwd):
    """results/<run> -> the newest run folder so far; a glob that matches nothing -> a copy of the newest
    encoder run under a matching name (random-tiny has too few blocks for the README's real hook names)."""
    runs = sorted((p for p in glob.glob(os.path.join(cwd, "results", "*")) if os.path.exists(
        os.path.join(p, "sae.safetensors"))), key=os.path.getmtime)
    out = []
    for a in argv:
        if a == "results/<run>":
            out.append(runs[-1])
        elif a.startswith("results/") and "*" in a:
            found = glob.glob(os.path.join(cwd, a))
            if not found:
                src = [r for r in runs if os.path.basename(r).startswith("enc") or "demo-enc" in r][-1]
                found = [shutil.copytree(src, os.path.join(cwd, a.replace("*", "tiny")))]
            out += sorted(found)
        else:
            out.append(a)
    return out


def run(argv, cwd):
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def bench_lane(workdir, request):
    """{index: Future of the finished process} for the selected benchmark commands, started now, one at a time."""
    selected = [item.callspec.params["index"] for item in request.session.items
                if item.module.__name__ == __name__ and hasattr(item, "callspec")]
    argvs = {i: plan(COMMANDS[i])[0] for i in selected}
    pool = ThreadPoolExecutor(max_workers=1)
    yield {i: pool.submit(run, argv, str(workdir)) for i, argv in argvs.items() if argv and is_bench(argv)}
    pool.shutdown(cancel_futures=True)


def is_bench(argv):
    return any(a.endswith(tuple(BENCH)) for a in argv[1:3])  # python bench/x.py or python -m bench.x


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(COMMANDS)), ids=[c[:60] for c in COMMANDS])
def test_readme_command_runs(workdir, bench_lane, index):
    argv, reason = plan(COMMANDS[index])
    if reason:
        pytest.skip(reason)
    proc = bench_lane[index].result() if index in bench_lane else run(resolve_runs(argv, str(workdir)), str(workdir))
    assert proc.returncode == 0, f"{COMMANDS[index]}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
