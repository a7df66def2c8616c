"""Command-line overrides for the constants block at the top of each script.

nanoGPT's configurator, minus the `exec`: `--key=value` is parsed with `ast.literal_eval` (a bare
word that is not a Python literal stays a string, so `--hook=enc_blocks.11` works), and a
positional `file.yaml` holds flat `key: value` overrides read with `yaml.safe_load`. Unknown keys
and type mismatches are errors, so typos never pass silently (nanoGPT issue #64). An int is
accepted where the default is a float; a YAML list where the default is a tuple.

Typical use, right after a script's constants block:

    config = apply_overrides(constants(globals()), sys.argv[1:])
    globals().update(config)
    require_positive(config, "batch_size", "k")   # values that cannot work stop here, before any model loads

User errors: `apply_overrides` installs an exception hook so that an error the repo's own code raises on
purpose (ValueError, KeyError, OSError or RuntimeError whose raising frame is in this repository: a bad value, a bad
file, a missing device) prints as one line `error: ...` and exits with status 2, without a traceback.
Anything else (a bug, an error inside torch or numpy) keeps its traceback. `--debug=True` on the command
line or the environment variable SAE_DEBUG=1 shows the traceback of user errors too.
"""
import ast
import os
import sys

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # files under here raise user errors
DEBUG_ENV = "SAE_DEBUG"  # SAE_DEBUG=1: tracebacks for user errors too (as --debug=True)
USER_ERROR_TYPES = (ValueError, KeyError, OSError, RuntimeError)  # user errors when the repo raises them
USER_ERROR_EXIT = 2  # exit status of a user error (as argparse's)


class UserError(ValueError):
    """A value or file the user can fix; the message names the setting or file, what was expected, what to do."""


def _raised_by_repo(exc):
    """True when the innermost frame of exc's traceback is a file of this repository (not a library)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    path = os.path.abspath(tb.tb_frame.f_code.co_filename) if tb is not None else ""
    return path.startswith(REPO + os.sep) and f"{os.sep}site-packages{os.sep}" not in path


def _excepthook(exc_type, exc, tb, _default=sys.excepthook):
    user = isinstance(exc, UserError) or (isinstance(exc, USER_ERROR_TYPES) and _raised_by_repo(exc))
    if not user or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        return _default(exc_type, exc, tb)
    msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)  # KeyError's str() adds quotes
    print(f"error: {msg}\n(rerun with --debug=True or {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(USER_ERROR_EXIT)  # an excepthook cannot set the exit status otherwise


def require(ok, setting, value, expected, hint=""):
    """Unless ok: a UserError "setting=value: expected ...; hint"."""
    if not ok:
        raise UserError(f"{setting}={value!r}: expected {expected}" + (f"; {hint}" if hint else ""))


def require_positive(config, *keys):
    """Every named setting must be > 0 (a batch of 0 tokens, 0 latents or 0 pairs cannot work)."""
    for key in keys:
        require(config[key] > 0, key, config[key], "a positive number", f"set --{key}=<n> with n > 0")


def _coerce(key, value, default, source):
    """Return `value` as the type of `default`, or raise naming the key and both types."""
    want = type(default)
    if want is float and type(value) is int:  # 3 for 3.0 is fine; True for 1.0 is not
        return float(value)
    if want is tuple and type(value) is list:  # YAML has no tuples
        return tuple(value)
    if type(value) is not want:
        raise UserError(f"{source}: '{key}' expects {want.__name__} (default {default!r}), "
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
    not starting with '_' and not ALL_CAPS (module constants a script imports, e.g. analyze_results'
    RESUMABLE_CHANGES, are not settings), in definition order; call as constants(globals()) after the block."""
    return {k: v for k, v in namespace.items()
            if not k.startswith("_") and not k.isupper() and type(v) in (int, float, bool, str, tuple)}


def apply_overrides(defaults, argv, verbose=True, doc=None):
    """Apply YAML files and `--key=value` arguments (in command-line order) to a copy of `defaults`.
    `--help` prints `doc` (the script's docstring) and the defaults, then exits."""
    config = dict(defaults)
    sys.excepthook = _excepthook
    if "--help" in argv or "-h" in argv:
        print((doc or "") + "\nconfig (override with --key=value or a flat .yaml file; --debug=True shows "
              "tracebacks of user errors):")
        for key, value in defaults.items():
            print(f"  {key} = {value!r}")
        raise SystemExit(0)
    if any(a in ("--debug", "--debug=True", "--debug=1") for a in argv):  # not a config key: changes no run
        os.environ[DEBUG_ENV] = "1"
        argv = [a for a in argv if a not in ("--debug", "--debug=True", "--debug=1")]
    for arg in argv:
        if arg.startswith("--"):
            if "=" not in arg:
                raise UserError(f"argument '{arg}': expected --key=value")
            key, text = arg[2:].split("=", 1)
            items, source = [(key, parse_value(text))], f"argument '{arg}'"
        elif arg.endswith((".yaml", ".yml")):
            if not os.path.isfile(arg):
                raise UserError(f"{arg}: no such config file (expected a flat YAML file of key: value lines)")
            with open(arg) as f:
                try:
                    loaded = yaml.safe_load(f) or {}
                except yaml.YAMLError as e:
                    raise UserError(f"{arg}: not valid YAML ({' '.join(str(e).split())}); expected flat "
                                    f"key: value lines") from None
            if not isinstance(loaded, dict):
                raise UserError(f"{arg}: expected a flat mapping of key: value, got {type(loaded).__name__}")
            # PyYAML reads 1e-3 (no dot) as a string: give such strings the literal parse as on the command line
            items = [(key, parse_value(v) if type(v) is str and type(defaults.get(key)) is not str else v)
                     for key, v in loaded.items()]
            source = arg
        else:
            raise UserError(f"argument '{arg}': expected --key=value or a .yaml file")
        for key, value in items:
            if key not in config:
                known = ", ".join(sorted(config))
                raise KeyError(f"{source}: unknown config key '{key}' (known keys: {known})")
            if isinstance(value, dict):
                raise UserError(f"{source}: '{key}' is nested; config files must be flat")
            config[key] = _coerce(key, value, defaults[key], source)
            if verbose:
                print(f"override: {key} = {config[key]!r}")
    return config
