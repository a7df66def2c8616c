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


def test_a_relu_checkpoint_saved_with_one_optimizer_group_is_refused_by_name(tmp_path):
    """relu's encoder biases got their own optimizer group (models/sae.py RELU_BENC_LR_SCALE): a relu run saved
    before has one group, and resuming it says so, naming the file, instead of torch's bare ValueError."""
    import torch

    from models.sae import SAE, SAEConfig
    from training.checkpoint import load_checkpoint, save_checkpoint
    from training.config import UserError

    sae = SAE(SAEConfig(d_in=8, n_latents=16, kind="relu", k=2))
    old = torch.optim.Adam(sae.parameters(), lr=1e-3)              # the optimizer relu runs were saved with
    save_checkpoint(tmp_path, sae, old, {"step": 3})
    with pytest.raises(UserError, match=r"state\.json: saved with 1 optimizer parameter group\(s\), this code "
                                        r"trains the SAE with 2"):
        load_checkpoint(tmp_path, sae, torch.optim.Adam(sae.param_groups(), lr=1e-3), "cpu")
    new = torch.optim.Adam(sae.param_groups(), lr=1e-3)
    save_checkpoint(tmp_path, sae, new, {"step": 4})
    fresh = torch.optim.Adam(sae.param_groups(), lr=1e-3)
    assert load_checkpoint(tmp_path, sae, fresh, "cpu")["step"] == 4
    assert fresh.param_groups[1]["lr_scale"] == new.param_groups[1]["lr_scale"] > 1   # the scale is saved with it
