"""Training speed of this project against a tutorial-style PyTorch loop, in one run.

    python bench.py                       # CPU, at train.py's batch size (64)
    python bench.py --device cuda --batch-size 2048
    python bench.py --ckpt results/beta4_H_z10_seed0   # both loops from a trained state

Both loops train the same model (model.py) with the same loss and Adam step; beside them, the
project's step under FactorVAE's objective (train.py --objective F) is timed too. The project's
step draws each batch from the data source train.py uses, bit-packed on the device, in its
steady state (the rendered store filled, as from train.py's second epoch on), and runs
train.train_step on the model with speed.py's settings. The baseline uses model.py as it is,
feeds a DataLoader from a Dataset whose __getitem__ converts one uint8 image to float, then
copies each batch to the device; it runs in a process of its own, as a tutorial script would,
since speed.py's process-wide settings would otherwise hold for it too. Timing windows
alternate between the two processes, so that machine noise hits both alike.
"""
import csv
import multiprocessing
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

import checkpoint
import cli
import dataset
import discriminator
import runlog
import speed
from cli import UserError, require
from loss import beta_vae_loss
from model import BetaVAE
from train import LR, make_critic, train_step  # LR: batch 64's rate, for every loop


class TutorialDataset(Dataset):
    """The common tutorial pattern: one image per __getitem__, converted to float there."""

    def __init__(self, imgs):
        self.imgs = imgs  # N, 64, 64 uint8

    def __len__(self):
        return len(self.imgs)

    def __getitem__(self, i):
        return self.imgs[i].unsqueeze(0).float()  # 1, 64, 64


def start_from(model, opt, ckpt):
    """A train.py checkpoint's weights and Adam moments, as its run has them (the optimizer
    keeps its own settings: fused or not, rate); with ckpt None, the model and opt as they are.
    Trained weights can be slower on CPU than fresh ones: see speed.py on flush-to-zero."""
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict({"state": ckpt["optimizer"]["state"],
                             "param_groups": opt.state_dict()["param_groups"]})
        for p, state in opt.state.items():  # moments in the parameter's own memory layout
            for key in ("exp_avg", "exp_avg_sq"):
                state[key] = torch.empty_like(p).copy_(state[key])
    return model, opt


def baseline_loop(imgs, batch_size, device, lr, ckpt=None):
    """A plain loop: DataLoader with shuffling, .to(device) per batch, default memory format."""
    model = BetaVAE().to(device)
    model, opt = start_from(model, torch.optim.Adam(model.parameters(), lr=lr), ckpt)
    loader = DataLoader(TutorialDataset(imgs), batch_size=batch_size, shuffle=True,
                        drop_last=True)
    while True:
        for x in loader:
            x = x.to(device)
            logits, mu, logvar = model(x)
            loss = beta_vae_loss(logits, x, mu, logvar)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            yield loss


def batch_stream(data, batch_size, device, seed=0):
    """uint8 batches in train.py's order, epoch after epoch, drawn as train.py draws them."""
    for epoch in range(sys.maxsize):
        order = dataset.epoch_order(seed, epoch, len(data)).to(device)
        for pos in range(len(data) // batch_size):
            yield data.images(order[pos * batch_size:(pos + 1) * batch_size])


def fast_model_and_adam(device, lr):
    """model.py's model and Adam with speed.py's settings, as train.py builds them."""
    model = speed.fast_model(BetaVAE(), device)
    return model, speed.adam(model, lr, device)


def project_loop(data, batch_size, device, lr, ckpt=None):
    """This project's training step, fed exactly as train.py feeds it."""
    model, opt = start_from(*fast_model_and_adam(device, lr), ckpt)
    for imgs in batch_stream(data, batch_size, device):
        yield train_step(model, opt, imgs)["loss"]


def factor_loop(data, batch_size, device, lr):
    """The project's step under objective F, from fresh weights: the VAE's step and the
    discriminator's, on a second batch (the stream's next; train.py's is half an epoch on, the
    same work)."""
    model, opt = fast_model_and_adam(device, lr)
    critic = make_critic(model.latent_dim, device)
    stream = batch_stream(data, batch_size, device)
    for imgs in stream:
        yield train_step(model, opt, imgs, critic, next(stream), objective="F",
                         gamma=discriminator.GAMMA, dataset_size=len(data))["loss"]


def baseline_process(conn, imgs, batch_size, device, lr, ckpt):
    """The baseline's own process: one timing window per number of seconds received; on None,
    its peak memory, and it ends."""
    device = torch.device(device)
    loop = baseline_loop(imgs, batch_size, device, lr, ckpt)
    while (seconds := conn.recv()) is not None:
        conn.send(time_window(loop, seconds, batch_size, device))
    conn.send(peak_memory(device))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_window(loop, seconds, batch_size, device):
    """Images per second over one window of about `seconds`; one sync at each end."""
    sync(device)
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        next(loop)
        steps += 1
    sync(device)
    return steps * batch_size / (time.perf_counter() - start)


def flops_per_image(device, objective="H", batch_size=8):
    """FLOPs of one training image (forward + backward), counted by torch in train_step on
    model.py as it is; under objective "F" with its discriminator's passes and the encoding of
    its second batch."""
    model = BetaVAE().to(device)
    imgs = torch.randint(0, 2, (batch_size, 64, 64), dtype=torch.uint8, device=device)
    critic = make_critic(model.latent_dim, device) if objective == "F" else None
    with FlopCounterMode(display=False) as counter:
        train_step(model, torch.optim.Adam(model.parameters()), imgs, critic,
                   imgs if critic else None, objective=objective, gamma=discriminator.GAMMA)
    return counter.get_total_flops() / batch_size


def matmul_gflops(device):
    """The compute bound: fp32 (CPU) or bf16 (GPU) square matmul throughput, best of 5."""
    n, dtype = (4096, torch.float32) if device.type == "cpu" else (8192, torch.bfloat16)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    best = 0.0
    for _ in range(6):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = max(best, 2 * n ** 3 / (time.perf_counter() - start) / 1e9)
    return best


def peak_memory(device):
    """MiB: peak allocated GPU memory, or the process's peak resident memory on CPU. Linux keeps
    ru_maxrss across exec, so a spawned process would report its parent's peak: read VmHWM."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):  # not Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


POOL = 16384  # images the baseline holds in memory; its batches are drawn from them


def bench(batch_size, device, seconds, windows, data, ckpt=None):
    """Alternating timing windows of both loops, both from `ckpt`'s state if given, then those
    of the project's loop under objective F (fresh weights): (rates per loop, the peak MiB of
    the project's loop and of the baseline's)."""
    project = project_loop(data, batch_size, device, LR, ckpt)
    factor = factor_loop(data, batch_size, device, LR)
    # The baseline's uint8 images, held in memory as the tutorials do (a POOL-image subset).
    pool = torch.cat([data.images(i).cpu() for i in torch.randperm(len(data))[:POOL].split(4096)])
    # A fresh interpreter ("spawn"): a forked child would inherit this process's settings.
    ctx = multiprocessing.get_context("spawn")
    conn, child_conn = ctx.Pipe()
    child = ctx.Process(target=baseline_process,
                        args=(child_conn, pool, batch_size, str(device), LR, ckpt))
    child.start()

    def baseline_window(s):
        conn.send(s)
        return conn.recv()

    time_window(project, min(seconds, 3.0), batch_size, device)  # warm-up: kernels chosen,
    baseline_window(min(seconds, 3.0))  # caches filled
    rates = {"project": [], "baseline": [], "F": []}
    for _ in range(windows):
        rates["project"].append(time_window(project, seconds, batch_size, device))
        rates["baseline"].append(baseline_window(seconds))
    conn.send(None)
    peaks = peak_memory(device), conn.recv()  # before F's loop adds its own memory
    child.join()
    time_window(factor, min(seconds, 3.0), batch_size, device)  # warm-up
    rates["F"] = [time_window(factor, seconds, batch_size, device) for _ in range(windows)]
    return rates, peaks


def plain_step(model, opt, imgs):
    """The same update without speed.py: model.py as it is, fp32, default memory format,
    foreach Adam, no autocast, and no TF32 in cuDNN's convolutions (PyTorch's default on CUDA
    rounds their inputs to TF32)."""
    x = dataset.as_input(imgs)
    with torch.backends.cudnn.flags(enabled=True, benchmark=torch.backends.cudnn.benchmark,
                                    allow_tf32=False):
        logits, mu, logvar = model(x)
        loss = beta_vae_loss(logits, x, mu, logvar)["loss"]
        opt.zero_grad()
        loss.backward()
    opt.step()
    return loss.detach()


CURVE_EVERY = 50  # --curve logs the mean loss of every 50 steps


def loss_curves(data, batch_size, device, steps, out, seed=0):
    """Train the project's step and plain_step side by side, from the same initial weights on
    the same batches, and write both loss curves to out.csv and out.png. Returns the rows."""
    torch.manual_seed(seed)
    fast, fast_opt = fast_model_and_adam(device, LR)
    plain = BetaVAE().to(device)
    plain.load_state_dict(fast.state_dict())
    plain_opt = torch.optim.Adam(plain.parameters(), lr=LR)
    rows, sums = [], torch.zeros(2, device=device)
    for step, imgs in zip(range(steps), batch_stream(data, batch_size, device, seed)):
        sums[0] += train_step(fast, fast_opt, imgs)["loss"]
        sums[1] += plain_step(plain, plain_opt, imgs)
        if (step + 1) % CURVE_EVERY == 0:
            rows.append([step + 1] + (sums / CURVE_EVERY).tolist())
            sums.zero_()
    with open(f"{out}.csv", "w", newline="") as f:
        csv.writer(f).writerows([["step", "project", "plain_fp32"]] + rows)
    with runlog.figure(f"{out}.png", (7, 4), "tight") as fig:
        ax = fig.subplots()
        steps_logged = [r[0] for r in rows]
        precision = "bf16 autocast" if device.type == "cuda" else "fp32"
        ax.plot(steps_logged, [r[1] for r in rows],
                label=f"this project ({precision}, channels_last)")
        ax.plot(steps_logged, [r[2] for r in rows], "--", label="plain fp32 loop")
        ax.set(xlabel="step", ylabel=f"loss, mean of {CURVE_EVERY} steps (nats per image)",
               yscale="log",
               title=f"Same batches, same initial weights: batch {batch_size} on {device.type}")
        ax.legend()
    return rows


def report_curves(data, batch_size, device, steps, seed):
    """--curve: both loss curves written to runs/, and the last tenth of each summarised."""
    out = Path("runs") / f"loss_match_{device.type}_seed{seed}"
    out.parent.mkdir(exist_ok=True)
    rows = loss_curves(data, batch_size, device, steps, out, seed)
    tail = rows[-max(1, len(rows) // 10):]
    for k, name in ((1, "project"), (2, "plain fp32")):
        values = [r[k] for r in tail]
        print(f"{name:>10}: loss {statistics.mean(values):.2f} ± {statistics.pstdev(values):.2f} "
              f"over the last {len(tail)} logged points (mean ± std)")
    print(f"wrote {out}.csv and {out}.png")


def build_parser():
    p = cli.parser("Training images/second: project vs tutorial loop.")
    cli.add_device_argument(p, default="cpu")
    p.add_argument("--batch-size", type=int, default=64,
                   help="batch size (default: 64, train.py's)")
    p.add_argument("--seconds", type=float, default=4.0,
                   help="length of one timing window (default: 4)")
    p.add_argument("--windows", type=int, default=5,
                   help="timing windows per loop, alternating (default: 5)")
    p.add_argument("--curve", type=int, default=0, metavar="STEPS",
                   help="instead of timing, train the project's step and a plain fp32 step "
                        "side by side for STEPS steps and write both loss curves to "
                        "runs/loss_match_<device>_seed<seed>.csv and .png (default: 0, off)")
    p.add_argument("--ckpt", metavar="RUN",
                   help="time both loops from this train.py checkpoint's weights and Adam "
                        "moments instead of fresh weights (default: none, fresh)")
    p.add_argument("--seed", type=int, default=0,
                   help="with --curve: seed of the initial weights and batch order (default: 0)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    require("batch-size", args.batch_size, 1, high=POOL)  # the baseline draws batches from POOL
    if args.seed and not args.curve:
        raise UserError("--seed seeds --curve's runs; without --curve it would do nothing")
    require("windows", args.windows, 1)
    require("seconds", args.seconds, 0, strict=True)
    cli.require_seeds([args.seed])
    if args.curve and args.curve < CURVE_EVERY:
        raise UserError(f"--curve must be 0 (off) or at least {CURVE_EVERY} steps")
    if args.curve and args.ckpt:
        raise UserError("--ckpt times both loops from a trained state; --curve starts from fresh "
                        "weights: give one of them")
    ckpt = None
    if args.ckpt:
        ckpt = checkpoint.load(args.ckpt)
        if ckpt["model_args"] != (config := BetaVAE().config):
            raise UserError(f"--ckpt: bench times BetaVAE() ({config}); this checkpoint's "
                            f"model is {ckpt['model_args']}")
        checkpoint.rebuild_model(ckpt)  # its weights fit, or one line now
    # As train.py does, before any multi-threaded op; the baseline's own process keeps defaults.
    speed.process_settings()
    device = cli.pick_device(args.device)
    data = dataset.load(device=device)
    if args.curve:
        return report_curves(data, args.batch_size, device, args.curve, args.seed)
    if data.drawn is not None:  # rendered on demand (CPU): time the steady state
        start = time.perf_counter()
        data.draw_all()
        print(f"data: all {len(data):,} images drawn into the rendered store in "
              f"{time.perf_counter() - start:.0f} s, as during train.py's first epoch; from the "
              f"second epoch on, as here, a batch is a lookup")
    flops, f_flops = flops_per_image(device), flops_per_image(device, "F")
    bound = matmul_gflops(device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else (
        f"CPU, {torch.get_num_threads()} threads")
    print(f"device: {name}; torch {torch.__version__}")
    print(f"model: {flops / 1e6:.1f} MFLOP per training image; compute bound: "
          f"{bound:,.0f} GFLOP/s ({'fp32' if device.type == 'cpu' else 'bf16'} matmul) "
          f"= {bound * 1e9 / flops:,.0f} images/s")
    print("weights: " + (f"{args.ckpt} at step {ckpt['step']:,} (weights and Adam moments), in "
                         f"both loops" if ckpt else "fresh BetaVAE(), as at step 0"))
    print(f"{'batch':>6} {'loop':>9} {'median img/s':>13} {'min':>8} {'max':>8} "
          f"{'GFLOP/s':>8} {'of bound':>9}")
    rates, (project_peak, baseline_peak) = bench(args.batch_size, device, args.seconds,
                                                 args.windows, data, ckpt=ckpt)
    f_rates = rates.pop("F")
    med = {k: statistics.median(v) for k, v in rates.items()}
    for k, v in rates.items():
        gflops = med[k] * flops / 1e9
        print(f"{args.batch_size:>6} {k:>9} {med[k]:>13,.0f} {min(v):>8,.0f} {max(v):>8,.0f} "
              f"{gflops:>8.1f} {gflops / bound:>9.0%}")
    print(f"{args.batch_size:>6} {'ratio':>9} {med['project'] / med['baseline']:>12.2f}x")
    f_med = statistics.median(f_rates)
    print(f"objective F (FactorVAE, fresh weights; its discriminator's step and second batch "
          f"besides): median {f_med:,.0f} img/s, min {min(f_rates):,.0f}, max {max(f_rates):,.0f}; "
          f"{f_med / med['project']:.2f}x the project's H loop; {f_flops / 1e6:.1f} MFLOP per "
          f"image ({f_flops / flops:.2f}x H's), {f_med * f_flops / 1e9 / bound:.0%} of the bound")
    what = "GPU memory allocated" if device.type == "cuda" else "resident memory"
    print(f"peak {what}: project {project_peak:,.0f} MiB, baseline {baseline_peak:,.0f} MiB")


if __name__ == "__main__":
    cli.run_script(main)
