"""bench.py end to end on a tiny budget: both loops run, and every figure it promises is printed."""
import re

import pytest

import bench
from dataset import UserError


def test_bench_prints_rates_ratio_flops_and_memory(capsys):
    bench.main(["--batch-size", "8", "--seconds", "0.3", "--windows", "2"])
    out = capsys.readouterr().out
    assert "model: 73.7 MFLOP per training image" in out  # forward + backward of BetaVAE()
    rates = {}
    for loop in ("project", "baseline"):
        m = re.search(rf"^\s+8 +{loop} +([\d,]+) +([\d,]+) +([\d,]+) +([\d.]+) +(\d+)%$", out, re.M)
        assert m, out
        median, low, high = (float(g.replace(",", "")) for g in m.groups()[:3])
        assert 0 < low <= median <= high
        rates[loop] = median
    ratio = float(re.search(r"^\s+8 +ratio +([\d.]+)x$", out, re.M).group(1))
    assert ratio == pytest.approx(rates["project"] / rates["baseline"], abs=0.01)
    mem = re.search(r"peak resident memory: project ([\d,]+) MiB, baseline ([\d,]+) MiB", out)
    assert mem and all(100 < float(v.replace(",", "")) < 4000 for v in mem.groups())


def test_bench_rejects_bad_flags():
    with pytest.raises(UserError, match="--batch-size and --windows must be at least 1"):
        bench.main(["--batch-size", "0"])
