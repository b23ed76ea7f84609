"""The run folder: its lock, its CSV logs and figures, the progress line, and stopping on a signal.

A run folder holds ckpt.pt (checkpoint.py), losses.csv (one row per --log-every steps),
loss_curve.png, and with --eval-every scores.csv and scores.png; train.lock while a process
writes to it. train.py, evaluate.py, traverse.py and sweep.py write here through these helpers.
"""
import csv
import os
import signal
import sys
from contextlib import contextmanager

from cli import UserError

# Logged beside the loss: β-TCVAE's decomposition of the KL (loss.py); FactorVAE's TC estimate
# and its discriminator's loss and accuracy (discriminator.py).
EXTRA_PARTS = {"TC": ("mi", "tc", "dw_kl"), "F": ("tc", "disc_loss", "disc_acc")}


# ---------------------------------------------------------------- lock and signals

class RunLock:
    """folder/name holds the writing process's id while it writes to the folder; a lock whose
    process is gone (killed, machine restarted) is taken over."""

    def __init__(self, folder, name="train.lock", what="a run", instead="choose another --out"):
        self.path = folder / name
        folder.mkdir(parents=True, exist_ok=True)
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
                    raise UserError(f"{folder} is in use by {what} (process {pid or '?'}); wait "
                                    f"for it, stop it, or {instead}") from None
                print(f"note: taking over the lock of {what} that is gone (process {pid})")
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


# ---------------------------------------------------------------- CSV logs

def loss_columns(latent_dim, objective):
    """losses.csv's header: the loss parts (the objective's EXTRA_PARTS besides), then each
    latent's KL."""
    return (["step", "epoch", "loss", "recon", "kl", "c"] + list(EXTRA_PARTS.get(objective, ())) +
            [f"kl_z{k}" for k in range(latent_dim)])


def start_log(path, columns, step=0):
    """A log from its header, keeping the rows up to `step`: on resume, rows logged after the
    checkpoint are dropped, since those steps are trained again."""
    rows = []
    if step and path.exists():
        with open(path, newline="") as f:
            rows = [r for r in list(csv.reader(f))[1:] if int(r[0]) <= step]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([columns] + rows)


def log_losses(path, columns, step, epoch, means, c):
    """One losses.csv row: means holds the loss parts (tensors) averaged over the logged steps."""
    values = {"step": step, "epoch": f"{epoch:.4f}", "c": f"{c:.3f}"}
    values.update({f"kl_z{k}": f"{v:.4f}" for k, v in enumerate(means["kl_per_dim"].tolist())})
    for k in columns:
        if k not in values:
            values[k] = f"{means[k].item():.4f}"
    with open(path, "a", newline="") as f:
        csv.writer(f).writerow([values[k] for k in columns])


def log_scores(path, step, result):
    """Append a quick-protocol evaluation (evaluate.evaluate_model's result) to scores.csv,
    redraw scores.png and print the scores."""
    row = {"step": step, "beta_vae": result["beta_vae"]["eval_accuracy"],
           "factor_vae": result["factor_vae"]["eval_accuracy"], "mig": result["mig"],
           "mig_no_shape": result["mig_no_shape"], "seconds": result["seconds"]}
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
    plot_scores(path, path.with_suffix(".png"))
    print("scores (quick protocol): " + ", ".join(
        f"{k} {v:.3f}" for k, v in row.items() if k not in ("step", "seconds")) +
          f" ({row['seconds']:.0f} s) -> {path}")


def read_columns(csv_path):
    """A CSV log as {column: list of floats}."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) for r in rows] for k in (rows[0] if rows else [])}


# ---------------------------------------------------------------- figures

@contextmanager
def figure(path, figsize, layout=None):
    """A matplotlib Figure, saved to `path` when the block ends: at its size with a layout
    ("tight"), else cropped to what was drawn. matplotlib is imported on first use: a script
    that draws nothing starts without it."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout=layout)
    yield fig
    fig.savefig(path, dpi=100, bbox_inches=None if layout else "tight")


def plot_losses(csv_path, png_path):
    """loss_curve.png: total, reconstruction and KL over steps; each latent's KL beside."""
    cols = read_columns(csv_path)
    if not cols:
        return
    with figure(png_path, (12, 4.2), "tight") as fig:
        ax1, ax2 = fig.subplots(1, 2)
        for name, label in (("loss", "total"), ("recon", "reconstruction"), ("kl", "KL")):
            ax1.plot(cols["step"], cols[name], label=label)
        ax1.set(xlabel="step", ylabel="nats per image", yscale="log", title="β-VAE loss")
        ax1.legend()
        for name in [k for k in cols if k.startswith("kl_z")]:
            ax2.plot(cols["step"], cols[name], label=name[3:])
        ax2.set(xlabel="step", ylabel="KL (nats)", title="KL per latent dimension")
        ax2.legend(ncol=2, fontsize=8)


def plot_scores(csv_path, png_path):
    """scores.png: the disentanglement scores of scores.csv over training steps."""
    cols = read_columns(csv_path)
    if not cols:
        return
    with figure(png_path, (6, 4.2), "tight") as fig:
        ax = fig.subplots()
        for name, label in (("beta_vae", "β-VAE score"), ("factor_vae", "FactorVAE score"),
                            ("mig", "MIG"), ("mig_no_shape", "MIG without shape")):
            ax.plot(cols["step"], cols[name], "o-", label=label)
        ax.set(xlabel="step", ylabel="score (quick protocol)", ylim=(0, 1),
               title="Disentanglement over training")
        ax.legend()


# ---------------------------------------------------------------- progress

def clock(seconds):
    """1:02:03 or 2:03."""
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def show(line, final=False):
    """A progress line: redrawn in place on a terminal (a newline once `final`), one printed
    line each elsewhere (a log file)."""
    if sys.stdout.isatty():
        print("\r\x1b[K" + line, end="\n" if final else "", flush=True)
    else:
        print(line, flush=True)


def progress_line(step, total, epoch, epochs, means, rate, elapsed, left):
    """Training's progress: epoch, bar, step, loss parts (TC and F: the total-correlation
    estimate; F: the discriminator's accuracy), speed, time elapsed and left."""
    done = int(30 * step / total)
    extra = "".join(f" {label} {means[key].item():.3f}" for key, label in
                    (("tc", "tc"), ("disc_acc", "D acc")) if key in means)
    return (f"epoch {epoch + 1}/{epochs} [{'#' * done}{'.' * (30 - done)}] step {step}/{total} "
            f"loss {means['loss'].item():.2f} recon {means['recon'].item():.2f} "
            f"kl {means['kl'].item():.2f}{extra} | {rate:,.0f} img/s | {clock(elapsed)} "
            f"elapsed, {clock(left)} left")
