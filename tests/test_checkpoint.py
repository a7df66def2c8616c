"""training/checkpoint.py: a resumed run refuses a changed config but allows run-control changes."""
import pytest

from training.checkpoint import check_resume_config


def test_resume_refuses_a_changed_config():
    saved = {"k": 32, "lr": 2e-4, "max_steps": 4, "num_workers": 4}
    check_resume_config(saved, {**saved, "max_steps": 0, "num_workers": 0}, "ckpt")  # run-control only: fine
    with pytest.raises(ValueError, match="k: 32 -> 64"):
        check_resume_config(saved, {**saved, "k": 64}, "ckpt")


def test_a_run_saved_before_a_new_constant_resumes_at_its_old_value():
    """token_weight was added after runs existed: their saved config has no such key and was trained without it,
    so they resume when asked for False and are refused, with the reason, when asked for True."""
    saved = {"k": 32, "lr": 2e-4}
    check_resume_config(saved, {**saved, "token_weight": False}, "ckpt")
    with pytest.raises(ValueError, match=r"token_weight: False \(saved before the constant existed\) -> True"):
        check_resume_config(saved, {**saved, "token_weight": True}, "ckpt")
    with pytest.raises(ValueError, match=r"token_weight: True -> False"):   # a saved value is compared as ever
        check_resume_config({**saved, "token_weight": True}, {**saved, "token_weight": False}, "ckpt")
