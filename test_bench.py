"""bench.py end to end on a tiny budget: both loops run, and every figure it promises is printed."""
import csv
import re

import pytest
import torch

import bench
import dataset
from dataset import UserError
from model import BetaVAE, UpConv


def test_bench_prints_rates_ratio_flops_and_memory(monkeypatch, capsys):
    monkeypatch.setattr(dataset, "NUM_IMAGES", 20_000)  # the rendered store, filled first
    bench.main(["--batch-size", "8", "--seconds", "0.3", "--windows", "2"])
    out = capsys.readouterr().out
    assert "data: all 20,000 images drawn into the rendered store in" in out
    assert "model: 73.7 MFLOP per training image" in out  # forward + backward of BetaVAE()
    rates = {}
    for loop in ("project", "baseline"):
        m = re.search(rf"^\s+8 +{loop} +([\d,]+) +([\d,]+) +([\d,]+) +([\d.]+) +(\d+)%$", out, re.M)
        assert m, out
        median, low, high = (float(g.replace(",", "")) for g in m.groups()[:3])
        assert 0 < low <= median <= high
        rates[loop] = median
    ratio = float(re.search(r"^\s+8 +ratio +([\d.]+)x$", out, re.M).group(1))
    # the printed medians are rounded to whole images/s, the ratio is not
    assert ratio == pytest.approx(rates["project"] / rates["baseline"], rel=0.05)
    mem = re.search(r"peak resident memory: project ([\d,]+) MiB, baseline ([\d,]+) MiB", out)
    assert mem and all(100 < float(v.replace(",", "")) < 4000 for v in mem.groups())


def test_tutorial_model_is_the_same_function_in_stock_layers():
    torch.manual_seed(0)
    ours, plain = BetaVAE().eval(), bench.tutorial_model().eval()
    plain.load_state_dict(ours.state_dict())  # strict: the same parameters under the same names
    assert sum(isinstance(m, UpConv) for m in ours.modules()) == 4
    assert not any(isinstance(m, UpConv) for m in plain.modules())
    x = (torch.rand(4, 1, 64, 64) > 0.7).float()
    torch.testing.assert_close(plain(x)[0], ours(x)[0], rtol=1e-5, atol=1e-5)


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
    with pytest.raises(UserError, match="--batch-size and --windows must be at least 1"):
        bench.main(["--batch-size", "0"])
    with pytest.raises(UserError, match="--curve must be 0 .off. or at least 50 steps"):
        bench.main(["--curve", "10"])
