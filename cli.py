"""What every script shares about its command line: flags, their checks, and one-line errors.

A user's mistake (a missing file, a bad flag, a nonsense number, a damaged checkpoint) ends the
script with one line on stderr and exit status 1, before any work, never with a traceback.
"""
import argparse
import json
import math
import os
import sys
from pathlib import Path

import torch

import dataset


class UserError(Exception):
    """A mistake in what the user gave (flag, number, folder): one line, exit status 1."""
    user_mistake = True


def user_mistake(error):
    """Whether an exception reports a user's mistake: a UserError, or an error of a lower module
    that carries the same mark (dataset.DataError, checkpoint.CheckpointError), so that those
    modules can be copied without this file."""
    return getattr(error, "user_mistake", False)


def run_script(main):
    """A script's entry point: exits with main()'s status, or with one line for a user error."""
    try:
        sys.exit(main())
    except BrokenPipeError:  # the output's reader stopped early (`| head`): no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except Exception as e:
        if not user_mistake(e):
            raise
        sys.exit(f"{Path(sys.argv[0]).name}: error: {e}")


def parser(description):
    """An ArgumentParser whose mistakes (an unknown flag, a bad choice, a missing argument) are
    UserErrors, one line and exit status 1 under run_script, not argparse's usage and status 2."""
    p = argparse.ArgumentParser(description=description)
    p.error = _raise_user_error
    return p


def _raise_user_error(message):
    raise UserError(message)


def read_json(path):
    """A JSON object that a script wrote (metrics.json, status.json); a damaged one is a
    UserError naming it, not a traceback."""
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is damaged ({e}): delete it, or restore it from git") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is damaged: a JSON object expected, got {type(data).__name__}")
    return data


def require_folder(what, path):
    """An output folder must be a folder or not exist yet (nor any file stand in its path)."""
    for p in (Path(path), *Path(path).parents):
        if p.exists() and not p.is_dir():
            raise UserError(f"{what} {path}: {p} is a file, not a folder")


def require(flag, value, low, strict=False, high=math.inf):
    """A flag's number must be finite and at least `low` (above it if strict), at most `high`;
    otherwise a UserError naming the flag and its allowed range."""
    if not (math.isfinite(value) and (value > low if strict else value >= low) and value <= high):
        bound = f"above {low}" if strict else f"at least {low}"
        if high < math.inf:
            bound += f" and at most {high}"
        raise UserError(f"--{flag.replace('_', '-')} must be a finite number {bound}, got {value}")


def require_seeds(seeds, flag="seed"):
    """Seeds are integers in [0, 2³¹ − 1] (numpy's and torch's generators take them), distinct."""
    for seed in seeds:
        require(flag, seed, 0, high=2**31 - 1)
    if len(set(seeds)) < len(seeds):
        raise UserError(f"--{flag} values must differ, got {' '.join(map(str, seeds))}")


def add_device_argument(parser, default="auto"):
    """The --device flag, the same in every script."""
    parser.add_argument("--device", default=default, choices=["auto", "cpu", "cuda", "mps"],
                        help=f"auto picks cuda, then mps, then cpu (default: {default})")


def pick_device(name):
    """The torch device for --device; a clear error when the one asked for is missing."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: CUDA is not available here; use --device cpu or auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps: MPS is not available here; use --device cpu or auto")
    return torch.device(name)


# What dataset.load(None) reads, for every --data flag's help.
DATA_DEFAULT = f"default: {dataset.DEFAULT_PATH} if present, else render offline"


def add_data_arguments(parser):
    """--data and --download, the same in every script; dataset.load(args.data, args.download)."""
    parser.add_argument("--data", default=None, help=f"official dSprites npz ({DATA_DEFAULT})")
    parser.add_argument("--download", action="store_true",
                        help="download the official file first, to the --data path (default: off)")
