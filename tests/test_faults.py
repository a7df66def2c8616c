"""Fault cases a user meets: files the project reads that are malicious, corrupted or truncated each give
one clear error naming the file."""
import os

import pytest
import torch

from models.dust3r import load_dust3r


class _RunsACommand:
    """Unpickling this calls os.system: a harmless command that leaves a marker file, if it ever ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_checkpoint_is_refused_as_executable(tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "DUSt3R_ViTLarge_BaseDecoder_224_linear.pth"
    torch.save({"model": {}, "args": _RunsACommand(marker)}, path)
    with pytest.raises(ValueError) as e:
        load_dust3r(path)
    msg = str(e.value)
    assert str(path) in msg and "executable" in msg and "system" in msg and "refused" in msg
    assert "weights_only" not in msg and "truncated" not in msg  # never the hint that would run it
    assert e.value.__cause__ is None and e.value.__suppress_context__  # torch's hint is not chained either
    assert not marker.exists()
