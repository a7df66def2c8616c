"""training/checkpoint.py: a resumed run refuses a changed config but allows run-control changes."""
import pytest

from training.checkpoint import check_resume_config


def test_resume_refuses_a_changed_config():
    saved = {"k": 32, "lr": 2e-4, "max_steps": 4, "num_workers": 4}
    check_resume_config(saved, {**saved, "max_steps": 0, "num_workers": 0}, "ckpt")  # run-control only: fine
    with pytest.raises(ValueError, match="k: 32 -> 64"):
        check_resume_config(saved, {**saved, "k": 64}, "ckpt")
