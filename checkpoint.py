"""The checkpoint file of a run: what train.py writes, and how every script reads it back.

    python checkpoint.py results/beta4_H_z10_seed0/ckpt.pt    # what a checkpoint holds

A checkpoint is a dict saved by torch.save: model_args (BetaVAE's constructor arguments),
model (its state dict), optimizer, step, args (train.py's flags) and rng; under FactorVAE's
objective also discriminator and disc_optimizer. BetaVAE(**model_args) plus the state dict
rebuilds the trained model; nothing here imports train.py.
"""
import os
from pathlib import Path

import torch

from model import BetaVAE

# What train.py writes, and the type each entry must have (rng is only needed to resume).
REQUIRED = {"model_args": dict, "model": dict, "optimizer": dict, "step": int, "args": dict}


class CheckpointError(Exception):
    """A missing, damaged or foreign checkpoint: one line, no traceback (cli.run_script)."""
    user_mistake = True


def run_dir(path):
    """The run folder of a checkpoint path, or the path itself when it is the folder."""
    path = Path(path)
    return path if path.is_dir() else path.parent


def state(model, opt, step, args, device, critic=None):
    """The checkpoint dict of a training run at `step`: enough to rebuild or resume it.
    critic: FactorVAE's (discriminator, its optimizer), or None."""
    ckpt = {"model_args": model.config, "model": model.state_dict(),
            "optimizer": opt.state_dict(), "step": step, "args": vars(args),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None}}
    if critic is not None:
        ckpt["discriminator"], ckpt["disc_optimizer"] = (m.state_dict() for m in critic)
    return ckpt


def restore(ckpt, model, opt, lr, device, critic=None):
    """Load state() back into a fresh model and optimizer, with the learning rate `lr` (a
    resumed run may lower it), the random generators and FactorVAE's critic (discriminator,
    optimizer) where given; returns the step. A state that does not fit them is a
    CheckpointError."""
    try:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        if critic is not None:
            critic[0].load_state_dict(ckpt["discriminator"])
            critic[1].load_state_dict(ckpt["disc_optimizer"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        first = (str(e).splitlines() or [""])[0]
        raise CheckpointError(f"the checkpoint cannot be resumed: {type(e).__name__} {first}") from e
    for group in opt.param_groups:  # the stored state carries the old rate
        group["lr"] = lr
    return ckpt["step"]


def save(path, ckpt):
    """Write atomically (temp file + rename): a crash mid-write never leaves a broken ckpt.pt."""
    tmp = Path(str(path) + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def load(path):
    """Read a ckpt.pt written by train.py (its run folder works too); CheckpointError otherwise."""
    path = Path(path)
    if path.is_dir():
        path = path / "ckpt.pt"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged or foreign file
        raise CheckpointError(f"{path} is not a readable checkpoint: damaged, truncated or not "
                              f"written by train.py ({type(e).__name__})") from e
    missing = set(REQUIRED) - set(ckpt if isinstance(ckpt, dict) else {})
    if missing:
        raise CheckpointError(f"{path} is not a checkpoint of train.py: missing {sorted(missing)}")
    wrong = [key for key, kind in REQUIRED.items() if not isinstance(ckpt[key], kind)]
    if "model" not in wrong and not all(map(torch.is_tensor, ckpt["model"].values())):
        wrong.append("model")
    if wrong:
        raise CheckpointError(f"{path} is not a checkpoint of train.py: {', '.join(wrong)} of "
                              f"the wrong type")
    return ckpt


def rebuild_model(ckpt, device="cpu"):
    """The trained model from a checkpoint dict alone, in eval mode (z = μ)."""
    try:
        model = BetaVAE(**ckpt["model_args"])
    except (TypeError, ValueError, RuntimeError) as e:  # unknown names, nonsense sizes
        raise CheckpointError(f"the checkpoint's model_args {ckpt['model_args']} are not "
                              f"BetaVAE's arguments") from e
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"the checkpoint's weights do not fit BetaVAE"
                              f"({ckpt['model_args']}): {str(e).splitlines()[0]}") from e
    return model.to(device).eval()


def main(argv=None):
    """`python checkpoint.py CKPT`: the step, the model and the flags of a checkpoint."""
    import cli  # the command line's parser; load() and the rest need torch and model.py alone

    p = cli.parser("What a checkpoint of train.py holds: its step, model and flags.")
    p.add_argument("ckpt", help="a ckpt.pt written by train.py, or its run folder")
    ckpt = load(p.parse_args(argv).ckpt)
    flags = [f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
             for k, v in sorted(ckpt["args"].items()) if v is not None and v is not False]
    print(f"step {ckpt['step']:,}; model {ckpt['model_args']}; "
          f"{sum(v.numel() for v in ckpt['model'].values()):,} parameters")
    print("flags: " + " ".join(flags))


if __name__ == "__main__":
    import cli  # one-line errors, as in every script; the module itself needs torch and model.py

    cli.run_script(main)
