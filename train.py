"""Train a β-VAE on dSprites.

    python train.py --beta 4 --epochs 30                  # Higgins et al.'s objective, β = 4
    python train.py --beta 4 --epochs 1 --max-steps 200   # a quick run: stops after 200 steps
    python train.py --objective TC --beta 6               # Chen et al.'s β-TCVAE
    python train.py --objective F                         # Kim & Mnih's FactorVAE, γ = 35
    python train.py --objective B --gamma 1000 --c-max 25 --init he  # Burgess et al.'s capacity
    python train.py --beta 4 --circles 1                  # the first latent on a circle
    python train.py --resume runs/beta4_H_z10_seed0       # continue where a run stopped
    python train.py --beta 4 --epochs 30 --eval-every 5   # disentanglement scores every 5 epochs

Writes the run folder (runlog.py): ckpt.pt (to rebuild the model or resume), losses.csv,
loss_curve.png and, with --eval-every, scores.csv and scores.png.
"""
import argparse
import functools
import math
import signal
import time
from pathlib import Path

import torch

import checkpoint
import cli
import dataset
import discriminator
import evaluate
import runlog
import speed
from loss import beta_vae_loss, linear_ramp
from model import BetaVAE, init_weights

# Flags a resumed run may change (a lower --lr rescues a diverged run); the others must match.
RESUMABLE = {"resume", "epochs", "max_steps", "lr", "device", "ckpt_every", "log_every",
             "eval_every", "data", "download"}
LR = 5e-4  # Adam's learning rate at batch 64, as in the papers (FactorVAE's: 1e-4)
GAMMA = {"B": 1000.0, "F": discriminator.GAMMA}  # --gamma's default per objective


def build_parser():
    p = cli.parser("Train a β-VAE on dSprites.")
    p.add_argument("--beta", type=float, default=4.0,
                   help="H: the KL's weight β; TC: the total correlation's (default: 4)")
    p.add_argument("--latent-dim", type=int, default=10, help="latent dimensions (default: 10)")
    p.add_argument("--circles", type=int, default=0,
                   help="how many of the latents lie on a circle (Power Spherical posterior, "
                        "uniform prior), the first ones; H and B only (default: 0)")
    p.add_argument("--objective", default="H", choices=["H", "TC", "B", "F"],
                   help="H: recon + β·KL (Higgins 2017); TC: recon + MI + β·TC + dimension-wise "
                        "KL (Chen 2018); B: recon + γ·|KL − C| (Burgess 2018); F: recon + KL + "
                        "γ·TC, TC from a discriminator (Kim 2018) (default: H)")
    p.add_argument("--gamma", type=float, default=None,
                   help="B: γ, the weight of |KL − C|; F: γ, the weight of TC (default: B 1000, "
                        "F 35)")
    p.add_argument("--c-max", type=float, default=25.0, help="B's final capacity C (default: 25)")
    p.add_argument("--c-steps", type=int, default=100_000,
                   help="B: C rises linearly from 0 over N steps (default: 100000)")
    p.add_argument("--warmup-steps", type=int, default=0,
                   help="H, TC: β rises linearly from 0 over N steps (default: 0, constant)")
    p.add_argument("--init", default="pytorch", choices=["pytorch", "he"],
                   help="weight init: each layer's default, or He's, which objective B needs "
                        "(default: pytorch)")
    p.add_argument("--epochs", type=int, default=30, help="passes over the 737,280 images (default: 30)")
    p.add_argument("--max-steps", type=int, help="stop at this step (default: no limit)")
    p.add_argument("--batch-size", type=int, default=64, help="images per step (default: 64)")
    p.add_argument("--lr", type=float, default=None,
                   help="Adam's learning rate (default: 5e-4 × sqrt(batch / 64); F: 1e-4 × "
                        "sqrt(batch / 64))")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, order and noise (default: 0)")
    cli.add_device_argument(p)
    cli.add_data_arguments(p)
    p.add_argument("--out", help="run folder (default: runs/<a name made of the flags>)")
    p.add_argument("--resume", metavar="RUN_DIR_OR_CKPT", help="continue a stopped run (default: no)")
    p.add_argument("--ckpt-every", type=int, default=1000,
                   help="write ckpt.pt every N steps and at each epoch end (default: 1000)")
    p.add_argument("--eval-every", type=int, default=0, metavar="EPOCHS", help="scores "
                   "(evaluate.py --quick) every N epochs and at the end (default: 0, off)")
    p.add_argument("--log-every", type=int, default=50,
                   help="log a losses.csv row and the progress line every N steps (default: 50)")
    return p


def default_lr(batch_size, objective="H"):
    """LR at batch 64 (FactorVAE's paper: 1e-4), scaled by sqrt(batch / 64): the square-root
    rule for Adam (Malladi et al. 2022, "On the SDEs and scaling rules for adaptive gradient
    algorithms")."""
    return (discriminator.VAE_LR if objective == "F" else LR) * math.sqrt(batch_size / 64)


def fill_defaults(args):
    """The defaults that follow the objective: --gamma's (B, F); returns args."""
    if args.gamma is None:
        args.gamma = GAMMA.get(args.objective)
    return args


def default_run_name(args):
    circles = f"_circles{args.circles}" if args.circles else ""
    if args.objective == "B":
        return (f"B_gamma{args.gamma:g}_c{args.c_max:g}_z{args.latent_dim}{circles}"
                f"_seed{args.seed}")
    if args.objective == "F":
        return f"F_gamma{args.gamma:g}_z{args.latent_dim}_seed{args.seed}"
    return f"beta{args.beta:g}_{args.objective}_z{args.latent_dim}{circles}_seed{args.seed}"


# The flags that each objective ignores (loss.py's H and TC take β; B takes γ and its capacity;
# F takes γ alone, with the KL at weight 1).
UNUSED = {"H": ("gamma", "c_max", "c_steps"), "TC": ("gamma", "c_max", "c_steps"),
          "B": ("beta", "warmup_steps"), "F": ("beta", "warmup_steps", "c_max", "c_steps")}


def check_args(args):
    """Every number in its range, and no flag the objective ignores set unlike its default,
    before any work: a UserError naming the flag otherwise."""
    for flag in ("beta", "c_max", "warmup_steps", "eval_every"):
        cli.require(flag, getattr(args, flag), 0)
    for flag in ("gamma", "lr"):  # lr None: the default, which follows the batch size
        if getattr(args, flag) is not None:
            cli.require(flag, getattr(args, flag), 0, strict=True)
    for flag in ("epochs", "latent_dim", "log_every", "ckpt_every", "c_steps", "max_steps"):
        if getattr(args, flag) is not None:  # max_steps None: no limit
            cli.require(flag, getattr(args, flag), 1)
    cli.require("batch_size", args.batch_size, 2 if args.objective == "TC" else 1,  # TC: a pair
                high=dataset.NUM_IMAGES // (2 if args.objective == "F" else 1))  # F: 2 batches
    cli.require_seeds([args.seed])
    cli.require("circles", args.circles, 0, high=args.latent_dim)
    if args.circles and args.objective in ("TC", "F"):
        raise cli.UserError(f"--circles goes with --objective H or B; {args.objective}'s "
                            "estimate of the total correlation has not been tried on circles")
    # A flag that the objective does not use, given a value unlike its default, is a mistake
    # (checked when a run starts: a resumed one keeps its flags, H's and TC's γ 1000 of old).
    defaults = build_parser().parse_args([])
    for flag in UNUSED[args.objective] if not args.resume else ():
        if getattr(args, flag) != getattr(defaults, flag):
            raise cli.UserError(f"--{flag.replace('_', '-')} {getattr(args, flag):g} does nothing "
                                f"under --objective {args.objective}")


def resolve_args(args, parser, argv):
    """For --resume: the stored run's arguments, with the RESUMABLE flags given on the command
    line (whatever their value); any other flag given with a value unlike the stored run's is an
    error, not ignored."""
    ckpt = checkpoint.load(args.resume)
    if "rng" not in ckpt:
        raise cli.UserError(f"{args.resume} holds no RNG state: it can be evaluated, not resumed")
    # A flag newer than the run takes its default, the value the run trained with.
    stored = {**vars(parser.parse_args([])), **ckpt["args"],
              "out": str(checkpoint.run_dir(args.resume))}  # it may have moved
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
            raise cli.UserError(f"--{key.replace('_', '-')} {value} conflicts with the run being "
                            f"resumed ({stored.get(key)}); a resumed run keeps its settings")
    return argparse.Namespace(**stored), ckpt


def train_step(model, opt, imgs, critic=None, imgs2=None, **loss_args):
    """One optimizer step on a uint8 batch; returns the loss parts and the spread of the batch's
    codes (max |μ − μ of its first image|) as tensors (no host sync). critic: FactorVAE's
    (discriminator, its optimizer), which then takes a step too, on imgs2, a second batch.
    loss_args: beta_vae_loss's keywords (objective, beta, gamma, c, dataset_size, circles)."""
    x = dataset.as_input(imgs)  # B, 1, 64, 64
    bf16 = functools.partial(torch.autocast, x.device.type, torch.bfloat16,
                             enabled=x.device.type == "cuda")
    # model(x), with the sample z that β-TCVAE's loss needs. The loss in fp32: BCE over 4096
    # pixels loses precision in bf16.
    mu, logvar, z = posterior(model, x, bf16)
    with bf16():
        logits = model.decode(z)
    tc = discriminator.tc_estimate(critic[0], z) if critic else None  # into z, not into D
    parts = beta_vae_loss(logits.float(), x, mu, logvar, z=z, tc=tc, **loss_args)
    opt.zero_grad(set_to_none=True)
    parts["loss"].backward()
    opt.step()
    if critic:
        parts.update(critic_step(model, critic, z.detach(), imgs2, bf16))
    mu = mu.detach()
    parts["spread"] = (mu - mu[:1]).abs().amax()  # 0: the encoder gives every image one code
    return {k: v.detach() for k, v in parts.items()}


def posterior(model, x, bf16):
    """The encoder's mu and logvar of x, in fp32, and a sample z of the posterior, drawn in fp32:
    in bf16 a z between 2 and 4 rounds by up to 0.008, a third of a well-placed latent's σ
    (~0.025), which would bias log q(z|x). bf16: train_step's autocast context (CUDA only)."""
    with bf16():
        mu, logvar = model.encode(x)
    mu, logvar = mu.float(), logvar.float()
    return mu, logvar, model.reparameterize(mu, logvar)


def critic_step(model, critic, z, imgs2, bf16):
    """FactorVAE's discriminator step (Kim & Mnih 2018, Algorithm 2): the VAE batch's samples z
    of q(z) against the second batch's samples, each latent permuted across the batch: samples
    of ∏_j q(z_j). Returns its loss and accuracy."""
    disc, disc_opt = critic
    with torch.no_grad():
        z2 = posterior(model, dataset.as_input(imgs2), bf16)[2]
    loss, accuracy = discriminator.discriminator_loss(disc, z, discriminator.permute_dims(z2))
    disc_opt.zero_grad(set_to_none=True)
    loss.backward()
    disc_opt.step()
    return {"disc_loss": loss, "disc_acc": accuracy}


def build(args, device, ckpt):
    """The model, its optimizer and FactorVAE's critic (discriminator, optimizer; None under
    other objectives), fresh or as `ckpt` left them; and the step to start at."""
    model = BetaVAE(latent_dim=args.latent_dim, circles=args.circles)
    if args.init == "he":
        init_weights(model)
    model = speed.fast_model(model, device)  # on CPU, ConvTranspose2d runs speed.up_conv
    opt = speed.adam(model, args.lr, device)
    critic = make_critic(args.latent_dim, device) if args.objective == "F" else None
    step = 0 if ckpt is None else checkpoint.restore(ckpt, model, opt, args.lr, device, critic)
    return model, opt, critic, step


def make_critic(latent_dim, device):
    """FactorVAE's discriminator and its Adam, at the paper's settings whatever the VAE's --lr."""
    disc = discriminator.Discriminator(latent_dim).to(device)
    return disc, speed.adam(disc, discriminator.DISC_LR, device, discriminator.DISC_BETAS)


def diverged(out, what):
    """The error for a NaN/inf: training stops and the last checkpoint (if any) stays as it was."""
    ckpt = out / "ckpt.pt"
    kept = f"{ckpt} keeps the last good state" if ckpt.exists() else "no checkpoint was written"
    return cli.UserError(f"{what}; stopped. {kept} (try a lower --lr)")


def train(args, ckpt, started):
    """Train from scratch, or on from `ckpt`; returns the exit status. started: main's start."""
    device, out = cli.pick_device(args.device), Path(args.out)
    torch.manual_seed(args.seed)
    data = dataset.load(args.data, args.download, device)
    lock, stop = runlog.RunLock(out), runlog.StopFlag()
    try:
        model, opt, critic, step = build(args, device, ckpt)
        log = Window(args, out, step)
        per_epoch, size = len(data) // args.batch_size, args.batch_size
        total = min(args.epochs * per_epoch, args.max_steps or math.inf)
        print(("" if ckpt is None else f"resumed {out} at step {step}\n") +
              f"training on {device}: {total - step} steps to go ({step}/{total}), "
              f"batch {size}, {per_epoch} steps per epoch -> {out}")
        step0 = step
        while step < total:
            epoch, pos = divmod(step, per_epoch)
            if pos == 0 or step == step0:  # on the device: slicing there costs no copy per step
                order = dataset.epoch_order(args.seed, epoch, len(data)).to(device)
            beta = linear_ramp(step, args.beta, args.warmup_steps)
            c = linear_ramp(step, args.c_max, args.c_steps) if args.objective == "B" else 0.0
            imgs = data.images(order[pos * size:(pos + 1) * size])
            # FactorVAE's second batch: the one half an epoch on, other images of the same order
            far = (pos + per_epoch // 2) % per_epoch
            imgs2 = data.images(order[far * size:(far + 1) * size]) if critic else None
            log.add(train_step(model, opt, imgs, critic, imgs2, objective=args.objective,
                               beta=beta, gamma=args.gamma, c=c, dataset_size=len(data),
                               circles=args.circles))
            step += 1
            if step == step0 + 1:
                if device.type == "cuda":
                    torch.cuda.synchronize()  # the step was only queued until now
                print(f"first step done {time.perf_counter() - started:.1f} s after start")
            epoch_end = step % per_epoch == 0 or step == total
            stopping = stop.signum  # read once: a signal arriving later is seen at the next step
            save_now = step % args.ckpt_every == 0 or epoch_end or stopping
            if step % args.log_every == 0 or save_now:  # before a checkpoint: seen to be finite
                log.write(step, total, per_epoch, c)
            if save_now:
                nets = {"weights": model}
                if critic:  # FactorVAE's discriminator steps after the logged values
                    nets["discriminator weights"] = critic[0]
                for what, net in nets.items():
                    if not all(torch.isfinite(p).all() for p in net.parameters()):
                        raise diverged(out, f"{what} became non-finite near step {step}")
                checkpoint.save(out / "ckpt.pt",
                                checkpoint.state(model, opt, step, args, device, critic))
            if epoch_end:
                end_epoch(args, out, model, data, step, total, epoch, per_epoch)
            if stopping:
                print(f"\n{signal.Signals(stopping).name}: stopped at step {step}; checkpoint "
                      f"saved. Continue with: python train.py --resume {out}")
                return 128 + stopping
        print(f"done: {step} steps; model in {out / 'ckpt.pt'}")
        return 0
    finally:
        stop.restore()
        lock.release()


class Window:
    """The loss parts summed since the last log line: checked, written to losses.csv and shown
    in the progress line every --log-every steps."""

    def __init__(self, args, out, step):
        self.args, self.path = args, out / "losses.csv"
        self.columns = runlog.loss_columns(args.latent_dim, args.objective)
        runlog.start_log(self.path, self.columns, step)  # resumed: the rows up to its step
        self.sums, self.step0, self.step, self.t0 = None, step, step, time.perf_counter()
        self.t = self.t0

    def add(self, parts):
        self.sums = parts if self.sums is None else {k: self.sums[k] + v for k, v in parts.items()}

    def write(self, step, total, per_epoch, c):
        """The means since the last line; a NaN or a dead encoder stops training here."""
        means = {k: v / (step - self.step) for k, v in self.sums.items()}
        if not all(torch.isfinite(v).all() for v in means.values()):
            raise diverged(self.path.parent, f"loss is {means['loss'].item()} near step {step}")
        size = self.args.batch_size
        if size > 1 and means["spread"] == 0:  # a dead ReLU layer: it never revives
            raise cli.UserError(f"the encoder died near step {step}: it gives every image the "
                                "same code, so no gradient reaches it again; stopped (--init he "
                                "avoids this with --objective B)")
        runlog.log_losses(self.path, self.columns, step, step / per_epoch, means, c)
        now = time.perf_counter()
        rate = (step - self.step) * size / (now - self.t)
        runlog.show(runlog.progress_line(
            step, total, (step - 1) // per_epoch, self.args.epochs, means, rate, now - self.t0,
            (total - step) * (now - self.t0) / (step - self.step0)))
        self.sums, self.t, self.step = None, now, step


def end_epoch(args, out, model, data, step, total, epoch, per_epoch):
    """At each epoch's end (and at --max-steps): the loss figure, and the scores when due."""
    runlog.plot_losses(out / "losses.csv", out / "loss_curve.png")
    what = f"epoch {epoch + 1}/{args.epochs} done" if step % per_epoch == 0 else "--max-steps reached"
    print(f"\n{what} at step {step}: wrote {out / 'ckpt.pt'} and {out / 'loss_curve.png'}")
    if args.eval_every and ((epoch + 1) % args.eval_every == 0 or step == total):
        runlog.log_scores(out / "scores.csv", step,
                          evaluate.evaluate_model(model, data, seed=args.seed, quick=True))


def main(argv=None):
    started = time.perf_counter()
    parser = build_parser()
    args = fill_defaults(parser.parse_args(argv))
    ckpt = None
    if args.resume:
        args, ckpt = resolve_args(args, parser, argv)
    else:
        args.out = args.out or str(Path("runs") / default_run_name(args))
        cli.require_folder("--out", args.out)
        if (Path(args.out) / "ckpt.pt").exists():
            raise cli.UserError(f"{args.out} already holds a run; continue it with --resume "
                            f"{args.out}, or choose another --out")
    check_args(args)
    if ckpt is not None:  # a resumed run never ends before the step it resumes from
        per_epoch = dataset.NUM_IMAGES // args.batch_size
        for flag, value, total in (("--epochs", args.epochs, args.epochs * per_epoch),
                                   ("--max-steps", args.max_steps, args.max_steps)):
            if value is not None and total < ckpt["step"]:
                raise cli.UserError(f"{flag} {value} ends at step {total:,}, before the "
                                    f"checkpoint's step {ckpt['step']:,}")
    if args.lr is None:
        args.lr = default_lr(args.batch_size, args.objective)
    speed.process_settings()  # before the first multi-threaded op: the checks above run none
    return train(args, ckpt, started)


if __name__ == "__main__":
    cli.run_script(main)
