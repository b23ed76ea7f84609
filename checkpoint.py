"""What every script shares about a run: the --device flag and the checkpoint file.

    python checkpoint.py results/beta4_H_z10_seed0/ckpt.pt    # what a checkpoint holds

A checkpoint is a dict saved by torch.save: model_args (BetaVAE's constructor arguments),
model (its state dict), optimizer, step, args (train.py's flags) and rng. BetaVAE(**model_args)
plus the state dict rebuilds the trained model; nothing here imports train.py.
"""
import argparse
import os
from pathlib import Path

import torch

import dataset
from dataset import UserError
from model import BetaVAE

REQUIRED = ("model_args", "model", "optimizer", "step", "args")


def add_device_argument(parser):
    """The --device flag, the same in every script."""
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                        help="auto picks cuda, then mps, then cpu (default: auto)")


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


def save(path, ckpt):
    """Write atomically (temp file + rename): a crash mid-write never leaves a broken ckpt.pt."""
    tmp = Path(str(path) + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def load(path):
    """Read a ckpt.pt written by train.py (its run folder works too); UserError otherwise."""
    path = Path(path)
    if path.is_dir():
        path = path / "ckpt.pt"
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged or foreign file
        raise UserError(f"{path} is not a readable checkpoint: damaged, truncated or not "
                        f"written by train.py ({type(e).__name__})") from e
    missing = set(REQUIRED) - set(ckpt if isinstance(ckpt, dict) else {})
    if missing:
        raise UserError(f"{path} is not a checkpoint of train.py: missing {sorted(missing)}")
    return ckpt


def rebuild_model(ckpt, device="cpu"):
    """The trained model from a checkpoint dict alone, in eval mode (z = μ)."""
    model = BetaVAE(**ckpt["model_args"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise UserError(f"the checkpoint's weights do not fit BetaVAE"
                        f"({ckpt['model_args']}): {str(e).splitlines()[0]}") from e
    return model.to(device).eval()


def main(argv=None):
    p = argparse.ArgumentParser(description="Print what a train.py checkpoint holds.")
    p.add_argument("ckpt", help="checkpoint written by train.py (or its run folder)")
    ckpt = load(p.parse_args(argv).ckpt)
    args = ckpt["args"]
    print(f"step {ckpt['step']:,}; model {ckpt['model_args']}; "
          f"{sum(v.numel() for v in ckpt['model'].values()):,} parameters")
    flags = [f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
             for k, v in sorted(args.items()) if v is not None and v is not False]
    print("flags: " + " ".join(flags))


if __name__ == "__main__":
    dataset.run_script(main)
