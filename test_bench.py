"""bench.py end to end on a tiny budget: both loops run, and every figure it promises is printed,
consistent with the others.

    python -m pytest -q test_bench.py
"""
import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bench
import checkpoint
import speed
from checkpoint import CheckpointError
from cli import UserError
from model import BetaVAE

REPO = Path(__file__).resolve().parent
NUM_IMAGES = 40_000  # the rendered store bench fills first (dSprites has 737,280)
# A fresh interpreter, so that the peak resident memory bench reports is its own process's, not
# that of pytest with whatever earlier tests left behind. It runs in an empty folder, so that
# it renders even where data/ holds the official file; the repository comes first on sys.path
# (the baseline's spawned process inherits it).
BENCH = (f"import sys; sys.path.insert(0, {str(REPO)!r}); import dataset; "
         f"dataset.NUM_IMAGES = {NUM_IMAGES}; import bench; "
         f"bench.main(['--batch-size', '8', '--seconds', '0.3', '--windows', '2'])")


def number(text):
    return float(text.replace(",", ""))


def test_bench_prints_rates_ratio_flops_and_memory(tmp_path):
    run = subprocess.run([sys.executable, "-c", BENCH], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    assert f"data: all {NUM_IMAGES:,} images drawn into the rendered store in" in out
    assert "weights: fresh BetaVAE(), as at step 0" in out
    m = re.search(r"^model: ([\d.]+) MFLOP per training image; compute bound: ([\d,]+) GFLOP/s "
                  r"\(fp32 matmul\) = ([\d,]+) images/s$", out, re.M)
    assert m, out
    mflop, bound, bound_rate = (number(g) for g in m.groups())
    assert mflop == 73.7  # forward + backward of BetaVAE()
    # Each figure is printed rounded: MFLOP to 0.1, GFLOP/s and images/s to 1.
    assert bound_rate == pytest.approx(bound * 1e3 / mflop,
                                       abs=0.5 + bound_rate * (0.5 / bound + 0.05 / mflop))
    medians = {}
    for loop in ("project", "baseline"):
        m = re.search(rf"^\s+8 +{loop} +([\d,]+) +([\d,]+) +([\d,]+) +([\d.]+) +(\d+)%$",
                      out, re.M)
        assert m, out
        median, _, _, gflops, percent = (number(g) for g in m.groups())
        assert median > 0
        # GFLOP/s = images/s x FLOP per image; rounding: median to 1 image/s, MFLOP to 0.1,
        # GFLOP/s to 0.1.
        assert gflops == pytest.approx(median * mflop / 1e3,
                                       abs=0.05 + (0.5 * mflop + 0.05 * median) / 1e3 + 1e-9)
        assert percent == pytest.approx(100 * gflops / bound, abs=1)  # of the compute bound
        medians[loop] = median
    ratio = number(re.search(r"^\s+8 +ratio +([\d.]+)x$", out, re.M).group(1))
    # The printed medians are rounded to whole images/s (a few under a loaded CPU), the ratio
    # to 0.01: it lies in the range the medians' rounding allows.
    low = (medians["project"] - 0.5) / (medians["baseline"] + 0.5)
    high = (medians["project"] + 0.5) / max(medians["baseline"] - 0.5, 1e-9)
    assert low - 0.005 <= ratio <= high + 0.005, (ratio, medians)
    m = re.search(r"^objective F \(FactorVAE, .*\): median ([\d,]+) img/s, min ([\d,]+), max "
                  r"([\d,]+); ([\d.]+)x the project's H loop; ([\d.]+) MFLOP per image "
                  r"\(([\d.]+)x H's\), (\d+)% of the bound$", out, re.M)
    assert m, out
    f_median, f_min, f_max, f_ratio, f_mflop, f_flop_ratio, f_percent = map(number, m.groups())
    assert 0 < f_min <= f_median <= f_max
    assert f_ratio == pytest.approx(f_median / medians["project"],
                                    abs=0.005 + f_ratio * 0.5 / min(f_median, medians["project"]))
    # F's step adds, per image, by the layer sizes (FLOPs = 2 x multiply-adds): the
    # discriminator (10 -> 1000, five 1000 -> 1000, 1000 -> 2: `macs` per sample) forward and
    # backward to z for the VAE's loss (2 x 2 macs); its own step on two samples, the image's z
    # and a permuted second-batch z, each forward, weight gradients and input gradients but its
    # first layer's (2 x (3 macs - 10 x 1000)); and the encoder's forward on the second batch
    # (4x4 convs 1 -> 32 -> 32 -> 32 -> 32 channels, out to 32, 16, 8, 4 pixels a side; then
    # 512 -> 256 -> 256 -> 20).
    macs = 10 * 1000 + 5 * 1000 * 1000 + 1000 * 2
    convs = ((1, 32), (32, 16), (32, 8), (32, 4))  # (channels in, output side)
    encoder = (sum(32 * side ** 2 * c_in * 16 for c_in, side in convs)
               + 512 * 256 + 256 * 256 + 256 * 20)
    added = 2 * (2 * macs + 2 * (3 * macs - 10 * 1000) + encoder)
    assert f_mflop == pytest.approx(mflop + added / 1e6, abs=0.1)
    assert f_flop_ratio == pytest.approx(f_mflop / mflop, abs=0.01)
    assert f_percent == pytest.approx(100 * f_median * f_mflop / 1e3 / bound, abs=1)
    m = re.search(r"^peak resident memory: project ([\d,]+) MiB, baseline ([\d,]+) MiB$",
                  out, re.M)
    assert m, out
    project, baseline = (number(g) for g in m.groups())
    # Measured on 2 CPU threads, torch 2.13: project 592-654 MiB, baseline 338. Of the project's,
    # torch itself is ~230 MiB, the rendering's freed scratch kept on the heap ~200 MiB, the
    # compute bound's matmul operands 128 MiB, the baseline's uint8 images 64 MiB and the
    # bit-packed store 20 MiB. 1,000 MiB leaves ~350 MiB of headroom, and still a real
    # regression breaks it: the store's 40,000 images held as float32 are 625 MiB on their own.
    assert 100 < project < 1000
    assert 100 < baseline < 1000


def test_curve_trains_both_steps_on_the_same_batches(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    bench.main(["--curve", "100", "--batch-size", "8", "--seed", "3"])
    out = capsys.readouterr().out
    with open(tmp_path / "runs" / "loss_match_cpu_seed3.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [50, 100]
    for r in rows:  # same weights, same batches, both fp32 on CPU: only the noise ε differs
        assert float(r["project"]) == pytest.approx(float(r["plain_fp32"]), rel=0.05)
    assert float(rows[1]["project"]) < float(rows[0]["project"])
    assert (tmp_path / "runs" / "loss_match_cpu_seed3.png").stat().st_size > 10_000
    assert re.search(r"project: loss [\d.]+ ± [\d.]+ over the last 1 logged points", out)


def test_bench_rejects_bad_flags():
    with pytest.raises(UserError, match="--batch-size must be a finite number at least 1 and at "
                                        "most 16384, got 0"):
        bench.main(["--batch-size", "0"])
    with pytest.raises(UserError, match="--windows must be a finite number at least 1, got 0"):
        bench.main(["--windows", "0"])
    with pytest.raises(UserError, match="--seconds must be a finite number above 0, got 0.0"):
        bench.main(["--seconds", "0"])
    with pytest.raises(UserError, match="--seconds must be a finite number above 0, got nan"):
        bench.main(["--seconds", "nan"])
    with pytest.raises(UserError, match="--ckpt times both loops .* give one of them"):
        bench.main(["--curve", "100", "--ckpt", "x"])
    with pytest.raises(UserError, match="--curve must be 0 .off. or at least 50 steps"):
        bench.main(["--curve", "10"])
    with pytest.raises(UserError, match="--batch-size must be .* at most 16384, got 16385"):
        bench.main(["--batch-size", "16385"])  # the baseline's pool would yield no batch
    with pytest.raises(UserError, match="--seed seeds --curve's runs"):
        bench.main(["--seed", "3"])


def trained_state(steps=3):
    """A checkpoint dict as train.py writes it, after a few fused-Adam steps at lr 5e-4."""
    torch.manual_seed(0)
    model = speed.fast_model(BetaVAE(), torch.device("cpu"))
    opt = speed.adam(model, 5e-4, torch.device("cpu"))
    for _ in range(steps):
        bench.train_step(model, opt, (torch.rand(4, 64, 64) < 0.2).to(torch.uint8))
    return {"model_args": model.config, "model": model.state_dict(),
            "optimizer": opt.state_dict(), "step": steps}


def test_start_from_takes_weights_and_moments_but_keeps_the_optimizers_settings():
    ckpt = trained_state()
    model = BetaVAE()  # the tutorial loop's model and plain Adam at another rate
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    bench.start_from(model, opt, ckpt)
    for name, p in model.state_dict().items():
        assert torch.equal(p, ckpt["model"][name]), name
    saved = ckpt["optimizer"]["state"]
    assert len(opt.state) == len(saved) == len(list(model.parameters()))
    for i, p in enumerate(model.parameters()):
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(opt.state[p][key], saved[i][key]), (i, key)
        for key in ("exp_avg", "exp_avg_sq"):  # saved channels_last, now in the plain layout
            assert opt.state[p][key].stride() == p.stride(), (i, key)
    group = opt.param_groups[0]
    assert (group["lr"], group["fused"]) == (1e-3, None)  # not the checkpoint's 5e-4, fused
    loss = bench.plain_step(model, opt, (torch.rand(4, 64, 64) < 0.2).to(torch.uint8))
    assert torch.isfinite(loss)  # the plain loop steps on from the checkpoint's step 3
    assert int(opt.state[next(model.parameters())]["step"]) == 4


def test_bench_refuses_a_checkpoint_of_another_model(tmp_path):
    ckpt = trained_state(1)
    ckpt.update(model_args={"latent_dim": 6, "channels": 1}, args={}, rng={})
    checkpoint.save(tmp_path / "ckpt.pt", ckpt)
    with pytest.raises(UserError, match=r"--ckpt: bench times BetaVAE\(\) \({'latent_dim': 10, "
                                        r"'channels': 1}\); this checkpoint's model is "):
        bench.main(["--ckpt", str(tmp_path)])
    ckpt.update(model_args=BetaVAE().config,
                model={k.replace("encoder", "enc"): v for k, v in ckpt["model"].items()})
    checkpoint.save(tmp_path / "ckpt.pt", ckpt)
    with pytest.raises(CheckpointError, match="the checkpoint's weights do not fit BetaVAE"):
        bench.main(["--ckpt", str(tmp_path)])
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        bench.main(["--ckpt", str(tmp_path / "missing")])
