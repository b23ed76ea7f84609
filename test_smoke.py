"""The path a newcomer takes, end to end on rendered data, each script run as a user runs it:
train, resume, traverse, evaluate (on a tiny protocol) and the checkpoint printed. Under a
minute on 2 cores; run it first, then the full suite.

    python -m pytest -q test_smoke.py
"""
import csv
import json

import imageio.v3 as iio

from conftest import run_script


# evaluate.py's main, run as `python evaluate.py ARGS` runs it but on a tiny protocol (a few
# hundred images per score, conftest's tiny_protocol): its --quick takes half a minute.
TINY_EVALUATE = ("import sys, cli, conftest, evaluate; "
                 "[d.update(conftest.TINY) for d in (evaluate.PROTOCOL, evaluate.QUICK)]; "
                 "cli.run_script(lambda: evaluate.main(sys.argv[1:]))")


def ok(*args):
    """Run a script as `python SCRIPT ARGS`; its stdout, after checking it exited 0 quietly."""
    r = run_script(*map(str, args))
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_train_resume_traverse_evaluate_and_print_the_checkpoint(tmp_path):
    run, gif = tmp_path / "run", tmp_path / "gif"

    out = ok("train.py", "--beta", "4", "--epochs", "1", "--max-steps", "30", "--batch-size",
             "16", "--lr", "2e-3", "--log-every", "10", "--ckpt-every", "10", "--out", run)
    assert "done: 30 steps" in out and "first step done" in out
    assert {p.name for p in run.iterdir()} == {"ckpt.pt", "losses.csv", "loss_curve.png"}

    out = ok("train.py", "--resume", run, "--max-steps", "60")
    assert f"resumed {run} at step 30" in out and "done: 60 steps" in out
    with open(run / "losses.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [10, 20, 30, 40, 50, 60]
    assert float(rows[-1]["loss"]) < 0.5 * float(rows[0]["loss"])  # ~2,000 -> ~600 nats

    out = ok("traverse.py", run / "ckpt.pt", "--out", gif)
    gifs = sorted(gif.glob("*/traversal_latent_dim_*.gif"))
    assert len(gifs) == 4 * 10 and "wrote 40 GIFs" in out
    assert len(iio.imread(gifs[0], index=None)) == 13 + 11  # -3..3 and back
    for png in ("traversal_grid.png", "reconstructions.png"):
        assert iio.imread(gif / png).shape[0] > 100, png
    table = (gif / "traversals.md").read_text().splitlines()
    assert len(table) == 2 + 4 and table[0].startswith("| sample | z0: ")

    out = ok("-c", TINY_EVALUATE, run, "--quick")
    metrics = json.loads((run / "metrics_quick.json").read_text())
    assert metrics["step"] == 60 and metrics["quick"] and metrics["representation"] == "mean"
    assert metrics["counts"]["n_mig"] == 400  # the tiny protocol
    for score in (metrics["beta_vae"]["eval_accuracy"], metrics["factor_vae"]["eval_accuracy"],
                  metrics["mig"], metrics["dci"]["disentanglement"], metrics["sap"]["sap"]):
        assert 0 <= score <= 1
    assert "MIG (Chen 2018)" in out and (run / "latent_factor_mi_quick.png").exists()

    out = ok("checkpoint.py", run / "ckpt.pt")
    assert out.startswith("step 60; model {'latent_dim': 10, 'channels': 1}; 502,005 parameters")
    assert "--max-steps 60" in out and "--beta 4.0" in out
