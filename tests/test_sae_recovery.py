"""Recipe regression: our TopK SAE, trained by the scripts' own step (training/step.py) on the 'tiny' planted
dictionary of bench/bench_recovery.py, must recover the planted atoms and reconstruct at least as well as
EleutherAI sparsify does on the very same stream (same width, k, tokens, Adam, lr and schedule).

Run: /work/main/.venv/bin/python -m pytest -q tests/test_sae_recovery.py   (seconds; sparsify not needed)
"""
import torch

from bench.bench_recovery import CONFIGS, run_config

# sparsify 1.3.3's SparseCoder on this case, measured by (see the README table, row 'tiny'):
#   python -m bench.bench_recovery --configs tiny --lrs 1e-3,3e-3 --kinds topk,batchtopk,matryoshka,sparsify
SPARSIFY = {1e-3: dict(recovery=RECOVERY_1E3, fvu=FVU_1E3), 3e-3: dict(recovery=RECOVERY_3E3, fvu=FVU_3E3)}


def test_topk_recovers_planted_atoms_no_worse_than_sparsify():
    n = torch.get_num_threads()
    torch.set_num_threads(1)   # tiny matmuls: one thread is faster on a shared 2-core machine
    try:
        for lr, ref in SPARSIFY.items():
            row, = run_config("tiny", CONFIGS["tiny"], lr, ["topk"], torch.device("cpu"), 0, {})
            assert row["recovery"] > row["null_recovery"] + 0.2     # far above a random decoder's
            assert row["recovery"] >= ref["recovery"], (lr, row)
            assert row["fvu"] <= ref["fvu"], (lr, row)
    finally:
        torch.set_num_threads(n)
