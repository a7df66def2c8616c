"""Override parser: literal parsing, unknown keys, type mismatches, YAML files, int-for-float."""
import pytest

from training.config import apply_overrides, constants

DEFAULTS = {"lr": 2e-4, "k": 32, "hook": "enc_norm", "cache": False, "shape": (224, 224)}


def test_literals_and_bare_strings():
    cfg = apply_overrides(DEFAULTS, ["--k=64", "--hook=enc_blocks.11", "--cache=True", "--lr=1e-3"], verbose=False)
    assert cfg == {**DEFAULTS, "k": 64, "hook": "enc_blocks.11", "cache": True, "lr": 1e-3}
    assert DEFAULTS["k"] == 32  # defaults are not mutated


def test_constants_are_the_lowercase_literals():
    """A script's config block: plain literals, not private names, not imported ALL_CAPS constants, not objects."""
    ns = {"lr": 2e-4, "hook": "enc_norm", "shape": (224, 224), "_tmp": 1, "RESUMABLE_CHANGES": ("device",),
          "os": pytest, "DEFAULTS": {}}
    assert constants(ns) == {"lr": 2e-4, "hook": "enc_norm", "shape": (224, 224)}


def test_int_for_float_is_accepted_as_float():
    cfg = apply_overrides(DEFAULTS, ["--lr=1"], verbose=False)
    assert cfg["lr"] == 1.0 and type(cfg["lr"]) is float


def test_unknown_key_is_an_error():
    with pytest.raises(KeyError, match="unknown config key 'learning_rate'"):
        apply_overrides(DEFAULTS, ["--learning_rate=1e-3"], verbose=False)


@pytest.mark.parametrize("arg", ["--k=3.5", "--k=True", "--cache=1", "--lr=fast", "--hook=3"])
def test_type_mismatch_is_an_error(arg):
    with pytest.raises(ValueError, match="expects"):
        apply_overrides(DEFAULTS, [arg], verbose=False)


def test_malformed_arguments():
    with pytest.raises(ValueError, match="--key=value"):
        apply_overrides(DEFAULTS, ["--k"], verbose=False)
    with pytest.raises(ValueError, match="--key=value"):
        apply_overrides(DEFAULTS, ["k=3"], verbose=False)


def test_yaml_file_then_cli_in_order(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("k: 16\nlr: 1e-3\nshape: [512, 384]\nhook: dec_blocks.5\n")  # PyYAML: 1e-3 is a str
    cfg = apply_overrides(DEFAULTS, [str(path), "--k=8"], verbose=False)
    assert cfg["k"] == 8 and cfg["lr"] == 1e-3 and cfg["shape"] == (512, 384) and cfg["hook"] == "dec_blocks.5"
    path.write_text("lr: fast\n")
    with pytest.raises(ValueError, match="expects float"):
        apply_overrides(DEFAULTS, [str(path)], verbose=False)


def test_yaml_unknown_key_and_nesting(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kk: 1\n")
    with pytest.raises(KeyError, match="bad.yaml"):
        apply_overrides(DEFAULTS, [str(bad)], verbose=False)
    nested = tmp_path / "nested.yaml"
    nested.write_text("k:\n  a: 1\n")
    with pytest.raises(ValueError, match="flat"):
        apply_overrides(DEFAULTS, [str(nested)], verbose=False)
