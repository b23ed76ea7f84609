"""Train a β-VAE on dSprites.

    python train.py --beta 4 --epochs 30                  # Higgins et al.'s objective, β = 4
    python train.py --beta 4 --epochs 30 --device cuda    # batch 2048: 108 s on one H200
    python train.py --beta 4 --epochs 1 --max-steps 200   # a quick run: stops after 200 steps
    python train.py --objective B --gamma 1000 --c-max 25 # Burgess et al.'s capacity objective
    python train.py --resume runs/beta4_H_z10_seed0       # continue where a run stopped
    python train.py --beta 4 --epochs 30 --eval-every 5   # disentanglement scores every 5 epochs

Writes into the run folder: ckpt.pt (everything needed to rebuild the model or resume),
losses.csv (one row per --log-every steps) and loss_curve.png (redrawn at each epoch end).
"""
import argparse
import csv
import ctypes
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch

import dataset
from dataset import UserError
from loss import beta_vae_loss, capacity
from model import BetaVAE

# Flags that may change when resuming (a lower --lr rescues a diverged run); every other
# flag is fixed by the stored run.
RESUMABLE = {"resume", "epochs", "max_steps", "lr", "device", "ckpt_every", "log_every",
             "eval_every", "data", "download"}


def build_parser():
    p = argparse.ArgumentParser(description="Train a β-VAE on dSprites.")
    p.add_argument("--beta", type=float, default=4.0, help="KL weight β of objective H (default: 4)")
    p.add_argument("--latent-dim", type=int, default=10, help="latent dimensions (default: 10)")
    p.add_argument("--objective", default="H", choices=["H", "B"],
                   help="H: recon + β·KL (Higgins 2017); B: recon + γ·|KL − C| (Burgess 2018) "
                        "(default: H)")
    p.add_argument("--gamma", type=float, default=1000.0, help="γ of objective B (default: 1000)")
    p.add_argument("--c-max", type=float, default=25.0,
                   help="final capacity C of objective B, in nats (default: 25)")
    p.add_argument("--c-steps", type=int, default=100_000,
                   help="steps over which C rises linearly from 0 to --c-max (default: 100000)")
    p.add_argument("--warmup-steps", type=int, default=0,
                   help="objective H: β rises linearly from 0 over the first N steps; 0 keeps "
                        "it constant (default: 0)")
    p.add_argument("--init", default="he", choices=["he", "pytorch"],
                   help="weight init: he (He et al. 2015, model.py) or pytorch (each layer's "
                        "default) (default: he)")
    p.add_argument("--epochs", type=int, default=30, help="passes over the 737,280 images (default: 30)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many optimizer steps in all (default: no limit)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per step (default: 64 on CPU and MPS, 2048 on CUDA)")
    p.add_argument("--lr", type=float, default=None,
                   help="Adam learning rate (default: 5e-4 at batch 64, scaled by "
                        "sqrt(batch / 64): 2.8e-3 at batch 2048)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, order and noise (default: 0)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="auto picks cuda, then mps, then cpu (default: auto)")
    dataset.add_data_argument(p)
    p.add_argument("--download", action="store_true",
                   help="download the official file into data/ first (default: off)")
    p.add_argument("--out", default=None,
                   help="run folder (default: runs/beta<β>_H_z<dim>_seed<seed>, or "
                        "runs/B_gamma<γ>_c<C>_z<dim>_seed<seed>)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR_OR_CKPT",
                   help="continue a stopped run from its folder or ckpt.pt (default: new run)")
    p.add_argument("--ckpt-every", type=int, default=1000,
                   help="write ckpt.pt every N steps, besides each epoch end (default: 1000)")
    p.add_argument("--eval-every", type=int, default=0, metavar="EPOCHS",
                   help="score disentanglement (evaluate.py --quick) every N epochs and at the "
                        "end, into scores.csv; 0 turns it off (default: 0)")
    p.add_argument("--log-every", type=int, default=50,
                   help="log a losses.csv row and the progress line every N steps (default: 50)")
    return p


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


def default_batch_size(device):
    """64 as in Burgess et al. on CPU; a GPU needs far larger batches to be kept busy."""
    return 2048 if device.type == "cuda" else 64


def default_lr(batch_size):
    """5e-4 at batch 64, scaled by sqrt(batch / 64): the square-root rule for Adam
    (Malladi et al. 2022, "On the SDEs and scaling rules for adaptive gradient algorithms")."""
    return 5e-4 * math.sqrt(batch_size / 64)


def speed_settings(device):
    """Process-wide settings for speed, the same for train.py and bench.py; the math is unchanged.

    CPU: glibc returns every freed block over 128 KB to the OS, so the activations of each step
    (8 MB for one 32x32x32 layer at batch 64) are page-faulted in anew, step after step; on a
    2-core CPU that costs about a quarter of the step. Blocks below 32 MB now stay in the heap
    (a no-op where the C library is not glibc: macOS, Windows, musl).
    CUDA: the shapes never change, so cuDNN times its kernels once and keeps the fastest.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: blocks below 32 MB come from the heap
    libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD: keep up to 256 MB of freed heap


def default_run_name(args):
    if args.objective == "H":
        return f"beta{args.beta:g}_H_z{args.latent_dim}_seed{args.seed}"
    return f"B_gamma{args.gamma:g}_c{args.c_max:g}_z{args.latent_dim}_seed{args.seed}"


# ---------------------------------------------------------------- checkpoints

def save_checkpoint(path, ckpt):
    """Write atomically (temp file + rename): a crash mid-write never leaves a broken ckpt.pt."""
    tmp = Path(str(path) + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, device="cpu"):
    """Read a ckpt.pt written by this script (a run folder works too); UserError otherwise."""
    path = Path(path)
    if path.is_dir():
        path = path / "ckpt.pt"
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # torch raises many types for a damaged or foreign file
        raise UserError(f"{path} is not a readable checkpoint: damaged, truncated or not "
                        f"written by train.py ({type(e).__name__})") from e
    missing = {"model_args", "model", "optimizer", "step", "args"} - set(ckpt if isinstance(ckpt, dict) else {})
    if missing:
        raise UserError(f"{path} is not a checkpoint of train.py: missing {sorted(missing)}")
    return ckpt


def model_from_checkpoint(ckpt, device="cpu"):
    """Rebuild the trained model from a checkpoint dict alone (eval mode: z = μ)."""
    model = BetaVAE(**ckpt["model_args"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()


# ---------------------------------------------------------------- logging

def csv_columns(latent_dim):
    return ["step", "epoch", "loss", "recon", "kl", "c"] + [f"kl_z{k}" for k in range(latent_dim)]


def truncate_log(path, step):
    """On resume, drop rows logged after the checkpoint: those steps are trained again."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([rows[0]] + [r for r in rows[1:] if int(r[0]) <= step])


def plot_losses(csv_path, png_path):
    """loss_curve.png: total, reconstruction and KL over steps; each latent's KL beside."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    steps = [int(r["step"]) for r in rows]
    col = lambda name: [float(r[name]) for r in rows]  # noqa: E731
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    for name in ("loss", "recon", "kl"):
        ax1.plot(steps, col(name), label={"loss": "total", "recon": "reconstruction",
                                           "kl": "KL"}[name])
    ax1.set(xlabel="step", ylabel="nats per image", yscale="log", title="β-VAE loss")
    ax1.legend()
    for name in [k for k in rows[0] if k.startswith("kl_z")]:
        ax2.plot(steps, col(name), label=name[3:])
    ax2.set(xlabel="step", ylabel="KL (nats)", title="KL per latent dimension")
    ax2.legend(ncol=2, fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


class StopFlag:
    """Ctrl-C and SIGTERM set a flag; the loop checkpoints at the next step and exits."""

    def __init__(self):
        self.signum = None
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, self._set)

    def _set(self, signum, frame):
        self.signum = signum


# ---------------------------------------------------------------- training

def epoch_order(seed, epoch, n):
    """The shuffled image order of one epoch, a function of (seed, epoch) alone, so a resumed
    run sees exactly the batches it would have seen."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def build(latent_dim, lr, device, init="he"):
    """Model and optimizer: the one place where layout and precision are chosen for speed.

    channels_last lets oneDNN (CPU) and cuDNN (GPU) pick their fast convolution kernels; on
    CUDA, train_step runs the model under bf16 autocast. Fused Adam (CPU, CUDA) updates all
    0.5 M parameters in one kernel instead of ~10 per parameter tensor (0.5 vs 3 ms a step on
    a 2-core CPU). None of these changes the math.
    """
    model = BetaVAE(latent_dim=latent_dim)  # He init (model.init_weights)
    if init == "pytorch":
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)):
                m.reset_parameters()
    model = model.to(device, memory_format=torch.channels_last)
    return model, torch.optim.Adam(model.parameters(), lr=lr, fused=device.type in ("cpu", "cuda"))


def train_step(model, opt, imgs, args, c, beta):
    """One optimizer step on a uint8 batch; returns the loss parts as tensors (no host sync)."""
    x = imgs.unsqueeze(1).float()  # B, 1, 64, 64: converted here, one batch at a time
    with torch.autocast(x.device.type, torch.bfloat16, enabled=x.device.type == "cuda"):
        logits, mu, logvar = model(x)
    # The loss in fp32: BCE summed over 4096 pixels would lose precision in bf16.
    parts = beta_vae_loss(logits.float(), x, mu.float(), logvar.float(), args.objective,
                          beta, args.gamma, c)
    opt.zero_grad(set_to_none=True)
    parts["loss"].backward()
    opt.step()
    return {k: v.detach() for k, v in parts.items()}


# Flags added after runs were stored: the value those runs were trained with.
LEGACY = {"init": "pytorch", "warmup_steps": 0}


def resolve_args(args, parser, argv):
    """For --resume: the stored run's arguments, with the RESUMABLE flags given on the command
    line (whatever their value); any other flag given with a value unlike the stored run's is an
    error, not ignored."""
    ckpt = load_checkpoint(args.resume)
    stored = {**LEGACY, **ckpt["args"]}
    resume = Path(args.resume)
    stored["out"] = str(resume if resume.is_dir() else resume.parent)  # the folder may have moved
    # Parsed again into a namespace where every flag is already set to a marker: argparse fills
    # in no defaults there, so what is not the marker was given on the command line.
    unset = object()
    given = vars(parser.parse_args(argv, argparse.Namespace(**dict.fromkeys(vars(args), unset))))
    for key, value in given.items():
        if value is unset:
            continue
        if key in RESUMABLE:
            stored[key] = value
        elif value != stored.get(key):
            raise UserError(f"--{key.replace('_', '-')} {value} conflicts with the run being "
                            f"resumed ({stored.get(key)}); a resumed run keeps its settings")
    return argparse.Namespace(**stored), ckpt


def train(args, ckpt=None):
    device = pick_device(args.device)
    speed_settings(device)
    torch.manual_seed(args.seed)
    data = dataset.load(args.data, args.download, device)
    out = Path(args.out)
    model, opt = build(args.latent_dim, args.lr, device, args.init)
    step = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        for group in opt.param_groups:  # the stored state carries the old rate; --lr wins
            group["lr"] = args.lr
        step = ckpt["step"]
        torch.set_rng_state(ckpt["rng"]["torch"])
        if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"])
        truncate_log(out / "losses.csv", step)
        print(f"resumed {out} at step {step}")
    else:
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "losses.csv", "w", newline="") as f:
            csv.writer(f).writerow(csv_columns(args.latent_dim))

    steps_per_epoch = len(data) // args.batch_size
    total = args.epochs * steps_per_epoch
    if args.max_steps is not None:
        total = min(total, args.max_steps)

    def checkpoint():
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise diverged(out, f"weights became non-finite near step {step}")
        save_checkpoint(out / "ckpt.pt", {
            "model_args": model.config, "model": model.state_dict(),
            "optimizer": opt.state_dict(), "step": step, "epoch": step / steps_per_epoch,
            "args": vars(args),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None},
        })

    stop = StopFlag()
    print(f"training on {device}: {total - step} steps to go ({step}/{total}), "
          f"batch {args.batch_size}, {steps_per_epoch} steps per epoch -> {out}")
    sums, n_sum, t_log, step_log = None, 0, time.perf_counter(), step
    while step < total:
        epoch, pos = divmod(step, steps_per_epoch)
        # On the device: slicing it there costs no host-device copy (and no sync) per step.
        order = epoch_order(args.seed, epoch, len(data)).to(device)
        while pos < steps_per_epoch and step < total:
            batch = order[pos * args.batch_size:(pos + 1) * args.batch_size]
            c = capacity(step, args.c_max, args.c_steps) if args.objective == "B" else 0.0
            beta = capacity(step, args.beta, args.warmup_steps) if args.warmup_steps else args.beta
            parts = train_step(model, opt, data.images(batch), args, c, beta)
            sums = parts if sums is None else {k: sums[k] + v for k, v in parts.items()}
            n_sum += 1
            step, pos = step + 1, pos + 1
            at_epoch_end = pos == steps_per_epoch or step == total
            due_ckpt = step % args.ckpt_every == 0 or at_epoch_end or stop.signum
            if step % args.log_every == 0 or due_ckpt:  # a checkpoint is written only after a check
                means = {k: v / n_sum for k, v in sums.items()}
                if not all(torch.isfinite(v).all() for v in means.values()):
                    raise diverged(out, f"loss is {means['loss'].item()} near step {step}")
                now = time.perf_counter()
                rate = (step - step_log) * args.batch_size / (now - t_log)
                log_row(out / "losses.csv", step, step / steps_per_epoch, means, c)
                progress(step, total, epoch, args.epochs, means, rate)
                sums, n_sum, t_log, step_log = None, 0, now, step
            if due_ckpt:
                checkpoint()
            if at_epoch_end:
                plot_losses(out / "losses.csv", out / "loss_curve.png")
                print(f"\nepoch {epoch + 1}/{args.epochs} done at step {step}: "
                      f"wrote {out / 'ckpt.pt'} and {out / 'loss_curve.png'}")
                if args.eval_every and ((epoch + 1) % args.eval_every == 0 or step == total):
                    log_scores(out / "scores.csv", step, model, data, args.seed)
            if stop.signum:
                name = signal.Signals(stop.signum).name
                print(f"\n{name}: stopped at step {step}; checkpoint saved. Continue with: "
                      f"python train.py --resume {out}")
                return 128 + stop.signum
    print(f"done: {step} steps; model in {out / 'ckpt.pt'}")
    return 0


def diverged(out, what):
    """The error for a NaN/inf: training stops and the last checkpoint (if any) stays as it was."""
    ckpt = out / "ckpt.pt"
    kept = f"{ckpt} keeps the last good state" if ckpt.exists() else "no checkpoint was written"
    return UserError(f"{what}; stopped. {kept} (try a lower --lr)")


def log_scores(path, step, model, data, seed):
    """evaluate.py's quick protocol on the current model, appended to scores.csv."""
    import evaluate  # here, not at the top: evaluate.py imports this module

    r = evaluate.evaluate_model(model, data, seed=seed, quick=True)
    row = {"step": step, "beta_vae": r["beta_vae"]["eval_accuracy"],
           "factor_vae": r["factor_vae"]["eval_accuracy"], "mig": r["mig"],
           "mig_no_shape": r["mig_no_shape"], "seconds": r["seconds"]}
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
    print("scores (quick protocol): " + ", ".join(
        f"{k} {v:.3f}" for k, v in row.items() if k not in ("step", "seconds")) +
          f" ({row['seconds']:.0f} s) -> {path}")


def log_row(path, step, epoch, means, c):
    with open(path, "a", newline="") as f:
        csv.writer(f).writerow([step, f"{epoch:.4f}"] + [
            f"{means[k].item():.4f}" for k in ("loss", "recon", "kl")] + [f"{c:.3f}"] + [
            f"{v:.4f}" for v in means["kl_per_dim"].tolist()])


def progress(step, total, epoch, epochs, means, rate):
    """One progress line: redrawn in place on a terminal, one line per log elsewhere."""
    done = int(30 * step / total)
    line = (f"epoch {epoch + 1}/{epochs} [{'#' * done}{'.' * (30 - done)}] step {step}/{total} "
            f"loss {means['loss'].item():.2f} recon {means['recon'].item():.2f} "
            f"kl {means['kl'].item():.2f} | {rate:,.0f} img/s")
    print("\r" + line if sys.stdout.isatty() else line, end="" if sys.stdout.isatty() else "\n",
          flush=True)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    ckpt = None
    if args.resume:
        args, ckpt = resolve_args(args, parser, argv)
    else:
        args.out = args.out or str(Path("runs") / default_run_name(args))
        if (Path(args.out) / "ckpt.pt").exists():
            raise UserError(f"{args.out} already holds a run; continue it with --resume "
                            f"{args.out}, or choose another --out")
    if args.batch_size is None:  # defaults that depend on the device (a resumed run has both)
        args.batch_size = default_batch_size(pick_device(args.device))
    for flag in ("epochs", "batch_size", "latent_dim", "log_every", "ckpt_every", "c_steps",
                 "max_steps"):
        value = getattr(args, flag)
        if value is not None and value < 1:  # None: --max-steps not given
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.warmup_steps < 0:
        raise UserError("--warmup-steps must be 0 (off) or a number of steps")
    if args.eval_every < 0:
        raise UserError("--eval-every must be 0 (off) or a number of epochs")
    if args.lr is None:
        args.lr = default_lr(args.batch_size)
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise UserError("--lr must be a positive number")
    return train(args, ckpt)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:
        sys.exit(f"train.py: error: {e}")
