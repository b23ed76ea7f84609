"""Train a β-VAE on dSprites.

    python train.py --beta 4 --epochs 30                  # Higgins et al.'s objective, β = 4
    python train.py --beta 4 --epochs 1 --max-steps 200   # a quick run: stops after 200 steps
    python train.py --objective B --gamma 1000 --c-max 25 # Burgess et al.'s capacity objective
    python train.py --resume runs/beta4_H_z10_seed0       # continue where a run stopped
    python train.py --beta 4 --epochs 30 --eval-every 5   # disentanglement scores every 5 epochs

Writes into the run folder: ckpt.pt (everything needed to rebuild the model or resume),
losses.csv (one row per --log-every steps), loss_curve.png (redrawn at each epoch end) and, with
--eval-every, scores.csv and its figure scores.png. The folder is locked while a run writes to it.
"""
import argparse
import csv
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch

import checkpoint
import dataset
import evaluate
import speed
from dataset import UserError, require
from loss import beta_vae_loss, linear_ramp
from model import BetaVAE, init_weights

# Flags a resumed run takes from the command line (a lower --lr rescues a diverged run); every
# other flag is fixed by the stored run, and giving it another value is an error.
RESUMABLE = {"resume", "epochs", "max_steps", "lr", "device", "ckpt_every", "log_every",
             "eval_every", "data", "download"}
# Flags added after runs were stored: the value those runs were trained with.
LEGACY = {"init": "pytorch", "warmup_steps": 0}


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
    p.add_argument("--init", default="pytorch", choices=["pytorch", "he"],
                   help="weight init: pytorch (each layer's default) or he (He et al. 2015, "
                        "model.init_weights) (default: pytorch)")
    p.add_argument("--epochs", type=int, default=30, help="passes over the 737,280 images (default: 30)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many optimizer steps in all (default: no limit)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="images per step, on every device (default: 64, as in the papers)")
    p.add_argument("--lr", type=float, default=None,
                   help="Adam learning rate (default: 5e-4 at batch 64, scaled by "
                        "sqrt(batch / 64) for other batch sizes)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, order and noise (default: 0)")
    checkpoint.add_device_argument(p)
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
                        "end, into scores.csv and scores.png; 0 turns it off (default: 0)")
    p.add_argument("--log-every", type=int, default=50,
                   help="log a losses.csv row and the progress line every N steps (default: 50)")
    return p


def default_lr(batch_size):
    """5e-4 at batch 64, scaled by sqrt(batch / 64): the square-root rule for Adam
    (Malladi et al. 2022, "On the SDEs and scaling rules for adaptive gradient algorithms")."""
    return 5e-4 * math.sqrt(batch_size / 64)


def default_run_name(args):
    if args.objective == "H":
        return f"beta{args.beta:g}_H_z{args.latent_dim}_seed{args.seed}"
    return f"B_gamma{args.gamma:g}_c{args.c_max:g}_z{args.latent_dim}_seed{args.seed}"


def check_args(args):
    """Every number in its range, before any work: a UserError naming the flag otherwise."""
    require("beta", args.beta, 0)
    require("gamma", args.gamma, 0, strict=True)
    require("c-max", args.c_max, 0)
    if args.lr is not None:  # None: the default, which follows the batch size
        require("lr", args.lr, 0, strict=True)
    require("seed", args.seed, 0, high=2**31 - 1)
    for flag in ("epochs", "latent_dim", "log_every", "ckpt_every", "c_steps"):
        require(flag, getattr(args, flag), 1)
    require("batch_size", args.batch_size, 1, high=dataset.NUM_IMAGES)
    if args.max_steps is not None:
        require("max-steps", args.max_steps, 1)
    require("warmup-steps", args.warmup_steps, 0)
    require("eval-every", args.eval_every, 0)


def resolve_args(args, parser, argv):
    """For --resume: the stored run's arguments, with the RESUMABLE flags given on the command
    line (whatever their value); any other flag given with a value unlike the stored run's is an
    error, not ignored."""
    ckpt = checkpoint.load(args.resume)
    if "rng" not in ckpt:
        raise UserError(f"{args.resume} holds no RNG state: it can be evaluated, not resumed")
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


def train_step(model, opt, imgs, **loss_args):
    """One optimizer step on a uint8 batch; returns the loss parts as tensors (no host sync).
    loss_args: beta_vae_loss's keywords (objective, beta, gamma, c)."""
    x = dataset.as_input(imgs)  # B, 1, 64, 64
    with torch.autocast(x.device.type, torch.bfloat16, enabled=x.device.type == "cuda"):
        logits, mu, logvar = model(x)
    # The loss in fp32: BCE summed over 4096 pixels would lose precision in bf16.
    parts = beta_vae_loss(logits.float(), x, mu.float(), logvar.float(), **loss_args)
    opt.zero_grad(set_to_none=True)
    parts["loss"].backward()
    opt.step()
    return {k: v.detach() for k, v in parts.items()}


# ---------------------------------------------------------------- run folder

class RunLock:
    """<run>/train.lock holds the writing process's id while a run writes to the folder; a lock
    whose process is gone (killed, machine restarted) is taken over."""

    def __init__(self, out):
        self.path = Path(out) / "train.lock"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.pid = str(os.getpid())
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                break
            except FileExistsError:
                pid = _read(self.path)
                if pid is None:  # released meanwhile: try again
                    continue
                if not pid.isdigit() or _alive(int(pid)):  # empty: its owner is writing it
                    raise UserError(f"{out} is in use by a run (process {pid or '?'}); wait for "
                                    f"it, stop it, or choose another --out") from None
                print(f"note: taking over the lock of a run that is gone (process {pid})")
                self.path.unlink(missing_ok=True)  # then O_EXCL again: one taker wins
        with os.fdopen(fd, "w") as f:
            f.write(self.pid)

    def release(self):
        if _read(self.path) == self.pid:
            self.path.unlink(missing_ok=True)


def _alive(pid):
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def _read(path):
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


def csv_columns(latent_dim):
    return ["step", "epoch", "loss", "recon", "kl", "c"] + [f"kl_z{k}" for k in range(latent_dim)]


def truncate_log(path, step, columns):
    """On resume, drop rows logged after the checkpoint: those steps are trained again. A
    missing or empty log starts anew from its header."""
    rows = []
    if path.exists():
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([columns] + [r for r in rows[1:] if int(r[0]) <= step])


def log_row(path, step, epoch, means, c):
    with open(path, "a", newline="") as f:
        csv.writer(f).writerow([step, f"{epoch:.4f}"] + [
            f"{means[k].item():.4f}" for k in ("loss", "recon", "kl")] + [f"{c:.3f}"] + [
            f"{v:.4f}" for v in means["kl_per_dim"].tolist()])


def read_columns(csv_path):
    """A CSV log as {column: list of floats}."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) for r in rows] for k in (rows[0] if rows else [])}


def plot_losses(csv_path, png_path):
    """loss_curve.png: total, reconstruction and KL over steps; each latent's KL beside."""
    from matplotlib.figure import Figure

    cols = read_columns(csv_path)
    if not cols:
        return
    steps = cols["step"]
    fig = Figure(figsize=(12, 4.2), layout="tight")
    ax1, ax2 = fig.subplots(1, 2)
    for name, label in (("loss", "total"), ("recon", "reconstruction"), ("kl", "KL")):
        ax1.plot(steps, cols[name], label=label)
    ax1.set(xlabel="step", ylabel="nats per image", yscale="log", title="β-VAE loss")
    ax1.legend()
    for name in [k for k in cols if k.startswith("kl_z")]:
        ax2.plot(steps, cols[name], label=name[3:])
    ax2.set(xlabel="step", ylabel="KL (nats)", title="KL per latent dimension")
    ax2.legend(ncol=2, fontsize=8)
    fig.savefig(png_path, dpi=100)


def log_scores(path, step, model, data, seed):
    """evaluate.py's quick protocol on the current model, appended to scores.csv and drawn
    with the earlier rows into scores.png."""
    r = evaluate.evaluate_model(model, data, seed=seed, quick=True)
    row = {"step": step, "beta_vae": r["beta_vae"]["eval_accuracy"],
           "factor_vae": r["factor_vae"]["eval_accuracy"], "mig": r["mig"],
           "mig_no_shape": r["mig_no_shape"], "seconds": r["seconds"]}
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
    print("scores (quick protocol): " + ", ".join(
        f"{k} {v:.3f}" for k, v in row.items() if k not in ("step", "seconds")) +
          f" ({row['seconds']:.0f} s) -> {path}")
    plot_scores(path, path.with_suffix(".png"))


def plot_scores(csv_path, png_path):
    """scores.png: the disentanglement scores of scores.csv over training steps."""
    from matplotlib.figure import Figure

    cols = read_columns(csv_path)
    if not cols:
        return
    fig = Figure(figsize=(6, 4.2), layout="tight")
    ax = fig.subplots()
    for name, label in (("beta_vae", "β-VAE score"), ("factor_vae", "FactorVAE score"),
                        ("mig", "MIG"), ("mig_no_shape", "MIG without shape")):
        ax.plot(cols["step"], cols[name], "o-", label=label)
    ax.set(xlabel="step", ylabel="score (quick protocol)", ylim=(0, 1),
           title="Disentanglement over training")
    ax.legend()
    fig.savefig(png_path, dpi=100)


def clock(seconds):
    """1:02:03 or 2:03."""
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def progress(step, total, epoch, epochs, means, rate, elapsed, left):
    """One progress line: redrawn in place on a terminal, one line per log elsewhere."""
    done = int(30 * step / total)
    line = (f"epoch {epoch + 1}/{epochs} [{'#' * done}{'.' * (30 - done)}] step {step}/{total} "
            f"loss {means['loss'].item():.2f} recon {means['recon'].item():.2f} "
            f"kl {means['kl'].item():.2f} | {rate:,.0f} img/s | {clock(elapsed)} elapsed, "
            f"{clock(left)} left")
    tty = sys.stdout.isatty()  # on a terminal: back to the line's start, clear it, redraw
    print("\r\x1b[K" + line if tty else line, end="" if tty else "\n", flush=True)


def diverged(out, what):
    """The error for a NaN/inf: training stops and the last checkpoint (if any) stays as it was."""
    ckpt = out / "ckpt.pt"
    kept = f"{ckpt} keeps the last good state" if ckpt.exists() else "no checkpoint was written"
    return UserError(f"{what}; stopped. {kept} (try a lower --lr)")


class StopFlag:
    """Ctrl-C and SIGTERM set a flag; the loop checkpoints at the next step and exits."""

    def __init__(self):
        self.signum = None
        self.previous = {s: signal.signal(s, self._set) for s in (signal.SIGINT, signal.SIGTERM)}

    def _set(self, signum, frame):
        self.signum = signum

    def restore(self):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


# ---------------------------------------------------------------- training

def train(args, ckpt=None, started=None):
    """The training loop; `ckpt` continues a stored run. Returns the exit status."""
    started = time.perf_counter() if started is None else started
    device = checkpoint.pick_device(args.device)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    data = dataset.load(args.data, args.download, device)
    lock, stop = RunLock(out), StopFlag()
    try:
        model = BetaVAE(latent_dim=args.latent_dim)
        if args.init == "he":
            init_weights(model)
        model = speed.fast_model(model, device)
        opt = speed.adam(model, args.lr, device)
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
            truncate_log(out / "losses.csv", step, csv_columns(args.latent_dim))
            print(f"resumed {out} at step {step}")
        else:
            with open(out / "losses.csv", "w", newline="") as f:
                csv.writer(f).writerow(csv_columns(args.latent_dim))
        steps_per_epoch = len(data) // args.batch_size
        total = args.epochs * steps_per_epoch
        if args.max_steps is not None:
            total = min(total, args.max_steps)
        print(f"training on {device}: {total - step} steps to go ({step}/{total}), "
              f"batch {args.batch_size}, {steps_per_epoch} steps per epoch -> {out}")

        t0, step0 = time.perf_counter(), step  # for the time left
        sums, t_log, step_log, order = None, t0, step, None
        while step < total:
            epoch, pos = divmod(step, steps_per_epoch)
            if pos == 0 or order is None:  # on the device: slicing there costs no copy per step
                order = dataset.epoch_order(args.seed, epoch, len(data)).to(device)
            batch = order[pos * args.batch_size:(pos + 1) * args.batch_size]
            beta = linear_ramp(step, args.beta, args.warmup_steps)
            c = linear_ramp(step, args.c_max, args.c_steps) if args.objective == "B" else 0.0
            parts = train_step(model, opt, data.images(batch), objective=args.objective,
                               beta=beta, gamma=args.gamma, c=c)
            sums = parts if sums is None else {k: sums[k] + v for k, v in parts.items()}
            step += 1
            if step == step0 + 1:
                if device.type == "cuda":
                    torch.cuda.synchronize()  # the step was only queued until now
                print(f"first step done {time.perf_counter() - started:.1f} s after start")
            epoch_end = step % steps_per_epoch == 0 or step == total
            save_now = step % args.ckpt_every == 0 or epoch_end or stop.signum

            # Log: a losses.csv row and the progress line; always before a checkpoint, whose
            # weights are written only after the loss was seen to be finite.
            if step % args.log_every == 0 or save_now:
                means = {k: v / (step - step_log) for k, v in sums.items()}
                if not all(torch.isfinite(v).all() for v in means.values()):
                    raise diverged(out, f"loss is {means['loss'].item()} near step {step}")
                now = time.perf_counter()
                log_row(out / "losses.csv", step, step / steps_per_epoch, means, c)
                progress(step, total, epoch, args.epochs, means,
                         (step - step_log) * args.batch_size / (now - t_log),
                         now - t0, (total - step) * (now - t0) / (step - step0))
                sums, t_log, step_log = None, now, step

            if save_now:
                if not all(torch.isfinite(p).all() for p in model.parameters()):
                    raise diverged(out, f"weights became non-finite near step {step}")
                checkpoint.save(out / "ckpt.pt", {
                    "model_args": model.config, "model": model.state_dict(),
                    "optimizer": opt.state_dict(), "step": step, "args": vars(args),
                    "rng": {"torch": torch.get_rng_state(),
                            "cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None},
                })

            if epoch_end:
                plot_losses(out / "losses.csv", out / "loss_curve.png")
                what = (f"epoch {epoch + 1}/{args.epochs} done" if step % steps_per_epoch == 0
                        else "--max-steps reached")
                print(f"\n{what} at step {step}: wrote {out / 'ckpt.pt'} and "
                      f"{out / 'loss_curve.png'}")
                if args.eval_every and ((epoch + 1) % args.eval_every == 0 or step == total):
                    log_scores(out / "scores.csv", step, model, data, args.seed)

            if stop.signum:
                print(f"\n{signal.Signals(stop.signum).name}: stopped at step {step}; checkpoint "
                      f"saved. Continue with: python train.py --resume {out}")
                return 128 + stop.signum
        print(f"done: {step} steps; model in {out / 'ckpt.pt'}")
        return 0
    finally:
        stop.restore()
        lock.release()


def process_start():
    """time.perf_counter() at the moment this process started, imports included (Linux, from
    /proc); elsewhere, now."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # start time since boot
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        return time.perf_counter() - age
    except (OSError, ValueError, AttributeError):
        return time.perf_counter()


def main(argv=None):
    started = process_start()
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
    check_args(args)
    if ckpt is not None and args.max_steps is not None and args.max_steps < ckpt["step"]:
        raise UserError(f"--max-steps {args.max_steps} is below the checkpoint's step "
                        f"{ckpt['step']}")
    if args.lr is None:
        args.lr = default_lr(args.batch_size)
    speed.process_settings()  # before the first multi-threaded op: the checks above run none
    return train(args, ckpt, started)


if __name__ == "__main__":
    dataset.run_script(main)
