"""bench/gpu_check.py: the prepared GPU check runs end to end in its CPU (CI) mode, so it cannot rot, and a
failing or overrunning section is recorded without stopping the others."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import gpu_check

ROOT = Path(__file__).resolve().parents[1]


BACKGROUND_TEST = "test_tiny_check_runs_every_section_on_cpu"  # started at session start (conftest.background)


def in_background(out):
    env = dict(os.environ, PYTHON=sys.executable)
    p = subprocess.run(["bash", "bench/gpu_check.sh", "--tiny", "--device=cpu", f"--out={out}"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=1500)
    return p, out


@pytest.mark.slow
def test_tiny_check_runs_every_section_on_cpu(background):
    p, tmp_path = background[__name__].result()
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    sec = report["sections"]
    assert list(sec) == list(gpu_check.SECTIONS) and all(s["status"] == "ok" for s in sec.values())
    cases = sec["correctness"]["result"]["cases"]
    assert [c["config"] for c in cases] == ["linear", "dpt"]
    assert all(c["fp32_ok"] and c["bf16_ok"] and 0 < c["bf16_max_rel_err"] <= gpu_check.BF16_TOL for c in cases)
    assert all(c["tensors"] > 10 and c["fp32_max_abs_err_outputs"] < 1e-3 for c in cases)
    train = sec["train"]["result"]
    assert train["steps"] == 4 and train["evals"] >= 2 and train["score_vs_clean"] is not None  # fidelity evals ran
    assert sec["analysis"]["result"]["n_pairs"] == 8 and sec["analysis"]["result"]["identical_pair_anchor_ok"]
    rows = sec["dust3r"]["result"]["rows"]
    assert [(r["mode"], r["compile"]) for r in rows] == [("full", "none"), ("encoder", "eager")]
    assert all(r["pairs_per_s"] > 0 and r["tflop_per_pair"] > 0 for r in rows)
    assert [r["variant"] for r in sec["sae"]["result"]["results"]] == ["topk", "batchtopk"]
    assert [r["side"] for r in sec["pipeline"]["result"]["runs"]] == ["encoder", "decoder"]
    md = (tmp_path / "gpu_check.md").read_text()
    for header in ("| section | status |", "| config | case |", "| model | mode | dtype | compile |",
                   "| SAE d -> latents |", "| pipeline side |", "Training run", "Analysis ("):
        assert header in md, header
    assert "Errors" not in md


def test_failing_section_is_recorded_and_the_next_runs():
    def boom(deadline):
        raise ValueError("bad config")

    rec = gpu_check.run_section("x", boom, 5)
    assert rec["status"] == "failed" and "ValueError: bad config" in rec["error"] and "result" not in rec
    rec = gpu_check.run_section("y", lambda deadline: {"v": round(deadline - time.time())}, 7)
    assert rec["status"] == "ok" and rec["result"]["v"] == 7 and rec["budget_s"] == 7


def test_timeout_kills_the_section_and_its_children(tmp_path):
    pid_file = tmp_path / "child.pid"
    code = ("import subprocess, sys, time; "
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            f"open({str(pid_file)!r}, 'w').write(str(c.pid)); time.sleep(60)")
    t0 = time.time()
    rec = gpu_check.run_section("slow", lambda deadline: gpu_check.run_cmd([sys.executable, "-c", code],
                                                                          deadline - time.time()), 3)
    assert rec["status"] == "timeout" and time.time() - t0 < 30
    child = int(pid_file.read_text())
    for _ in range(50):  # the grandchild is gone too (its process group was killed)
        if not Path(f"/proc/{child}").exists() or " Z " in Path(f"/proc/{child}/stat").read_text():
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"grandchild {child} still running")


def test_markdown_lists_failed_sections_with_their_error():
    report = dict(tiny=True, command="gpu_check.py --tiny", environment=dict(
        device="cpu", torch="2", cuda=None, cpu_count=2, git_commit="abc", date_utc="now"), sections=dict(
        sae=dict(status="ok", seconds=1.0, budget_s=5, result=dict(results=[dict(
            d_in=32, n_latents=128, variant="topk", batch=256, bf16=False, ms_per_step=3.0, tokens_per_s=85333.3)])),
        pipeline=dict(status="timeout", seconds=5.0, budget_s=5,
                      error="bench_pipeline.py killed after 5 s\nlast line")))
    md = gpu_check.markdown(report)
    assert "| sae | ok | 1 | 5 |" in md and "| pipeline | timeout | 5 | 5 |" in md
    assert "| 32 -> 128 | topk | 256 | False | 3.00 | 85333 |" in md
    assert "- pipeline: `last line`" in md
