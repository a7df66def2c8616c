"""Command-line overrides for the constants block at the top of each script.

nanoGPT's configurator, minus the `exec`: `--key=value` is parsed with `ast.literal_eval` (a bare
word that is not a Python literal stays a string, so `--hook=enc_blocks.11` works), and a
positional `file.yaml` holds flat `key: value` overrides read with `yaml.safe_load`. Unknown keys
and type mismatches are errors, so typos never pass silently (nanoGPT issue #64). An int is
accepted where the default is a float; a YAML list where the default is a tuple.

Typical use, right after a script's constants block:

    config = apply_overrides(constants(globals()), sys.argv[1:])
    globals().update(config)
"""
import ast

import yaml


def _coerce(key, value, default, source):
    """Return `value` as the type of `default`, or raise naming the key and both types."""
    want = type(default)
    if want is float and type(value) is int:  # 3 for 3.0 is fine; True for 1.0 is not
        return float(value)
    if want is tuple and type(value) is list:  # YAML has no tuples
        return tuple(value)
    if type(value) is not want:
        raise ValueError(f"{source}: '{key}' expects {want.__name__} (default {default!r}), "
                         f"got {type(value).__name__} {value!r}")
    return value


def parse_value(text):
    """Parse the right-hand side of `--key=value`: a Python literal, else the raw string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def constants(namespace):
    """The config block of a script: its module-level plain literals (int, float, bool, str, tuple), names
    not starting with '_', in definition order; call as constants(globals()) right after the block."""
    return {k: v for k, v in namespace.items() if not k.startswith("_") and type(v) in (int, float, bool, str, tuple)}


def apply_overrides(defaults, argv, verbose=True, doc=None):
    """Apply YAML files and `--key=value` arguments (in command-line order) to a copy of `defaults`.
    `--help` prints `doc` (the script's docstring) and the defaults, then exits."""
    config = dict(defaults)
    if "--help" in argv or "-h" in argv:
        print((doc or "") + "\nconfig (override with --key=value or a flat .yaml file):")
        for key, value in defaults.items():
            print(f"  {key} = {value!r}")
        raise SystemExit(0)
    for arg in argv:
        if arg.startswith("--"):
            if "=" not in arg:
                raise ValueError(f"argument '{arg}': expected --key=value")
            key, text = arg[2:].split("=", 1)
            items, source = [(key, parse_value(text))], f"argument '{arg}'"
        elif arg.endswith((".yaml", ".yml")):
            with open(arg) as f:
                loaded = yaml.safe_load(f) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"{arg}: expected a flat mapping of key: value, got {type(loaded).__name__}")
            # PyYAML reads 1e-3 (no dot) as a string: give such strings the literal parse as on the command line
            items = [(key, parse_value(v) if type(v) is str and type(defaults.get(key)) is not str else v)
                     for key, v in loaded.items()]
            source = arg
        else:
            raise ValueError(f"argument '{arg}': expected --key=value or a .yaml file")
        for key, value in items:
            if key not in config:
                known = ", ".join(sorted(config))
                raise KeyError(f"{source}: unknown config key '{key}' (known keys: {known})")
            if isinstance(value, dict):
                raise ValueError(f"{source}: '{key}' is nested; config files must be flat")
            config[key] = _coerce(key, value, defaults[key], source)
            if verbose:
                print(f"override: {key} = {config[key]!r}")
    return config
