"""End to end on rendered data: train, checkpoint, resume, traverse, and the user's mistakes."""
import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import pytest
import torch

import train
import traverse
from dataset import UserError

HERE = Path(__file__).resolve().parent
FAST = ["--batch-size", "16", "--log-every", "5", "--ckpt-every", "10", "--lr", "2e-3"]


def rows(run):
    with open(run / "losses.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def run40(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "straight"
    assert train.main(["--epochs", "1", "--max-steps", "40", "--out", str(out)] + FAST) == 0
    return out


def test_training_writes_a_run_and_the_loss_goes_down(run40):
    assert {p.name for p in run40.iterdir()} == {"ckpt.pt", "losses.csv", "loss_curve.png"}
    log = rows(run40)
    assert [int(r["step"]) for r in log] == list(range(5, 41, 5))
    assert list(log[0])[-1] == "kl_z9" and len(log[0]) == 6 + 10
    assert float(log[-1]["loss"]) < 0.5 * float(log[0]["loss"])  # ~3100 -> ~670
    ckpt = train.load_checkpoint(run40)
    assert ckpt["step"] == 40 and ckpt["args"]["beta"] == 4.0
    assert ckpt["model_args"] == {"latent_dim": 10, "channels": 1}
    model = train.model_from_checkpoint(ckpt)
    assert not model.training
    mu, _ = model.encode(torch.zeros(2, 1, 64, 64))
    assert mu.shape == (2, 10)


def test_resume_continues_exactly(run40, tmp_path):
    out = tmp_path / "resumed"
    train.main(["--epochs", "1", "--max-steps", "25", "--out", str(out)] + FAST)
    assert train.load_checkpoint(out)["step"] == 25
    assert train.main(["--resume", str(out / "ckpt.pt"), "--max-steps", "40"]) == 0
    a, b = train.load_checkpoint(run40), train.load_checkpoint(out)
    assert b["step"] == 40 and b["args"]["epochs"] == 1
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert rows(out) == rows(run40)


def test_traverse_writes_gifs_grid_and_reconstructions(run40, tmp_path):
    out = tmp_path / "gif"
    traverse.main([str(run40 / "ckpt.pt"), "--out", str(out), "--frames", "5"])
    gifs = sorted(out.glob("*/*.gif"))
    assert len(gifs) == 4 * 10
    assert {g.parent.name for g in gifs} == {"1", "2", "3", "4"}
    assert (out / "3" / "traversal_latent_dim_9.gif").exists()
    frames = iio.imread(gifs[0], index=None)
    # 5 z values forward, 3 back (ping-pong); 64 px upscaled x2, plus the z bar.
    assert frames.shape[:3] == (8, 128 + traverse.BAR, 128)
    assert iio.immeta(gifs[0])["loop"] == 0
    for png in ("traversal_grid.png", "reconstructions.png"):
        assert iio.imread(out / png).shape[0] > 100
    table = (out / "traversals.md").read_text().splitlines()
    assert len(table) == 2 + 4 and table[0].count("|") == 12
    assert f'<img src="{out.as_posix()}/4/traversal_latent_dim_9.gif"' in table[-1]


def test_traverse_names_latents_from_metrics(run40, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "ckpt.pt").write_bytes((run40 / "ckpt.pt").read_bytes())
    mi = [[0.0] * 5 for _ in range(10)]
    mi[0][3], mi[1][1] = 0.8, 0.5  # z0 ~ posX, z1 ~ scale
    kl = [2.5, 1.25] + [0.01] * 8
    (run / "metrics.json").write_text(json.dumps({"step": 40, "mi": mi, "kl_per_dim": kl}))
    traverse.main([str(run / "ckpt.pt"), "--out", str(tmp_path / "gif"), "--frames", "3"])
    header = (tmp_path / "gif" / "traversals.md").read_text().splitlines()[0]
    assert header.startswith("| sample | z0: posX (KL 2.50) | z1: scale (KL 1.25) | z2: inactive")
    assert "latents by KL: z0: posX (KL 2.50), z1: scale (KL 1.25), z2: inactive" in (
        capsys.readouterr().out)


def test_user_mistakes_raise_clear_errors(run40, tmp_path):
    with pytest.raises(UserError, match="already holds a run"):
        train.main(["--out", str(run40)])
    with pytest.raises(UserError, match="--beta 8.0 conflicts with the run being resumed"):
        train.main(["--resume", str(run40), "--beta", "8"])
    with pytest.raises(UserError, match="no checkpoint at"):
        train.main(["--resume", str(tmp_path / "nothing")])
    with pytest.raises(UserError, match="--batch-size must be at least 1"):
        train.main(["--batch-size", "0", "--out", str(tmp_path / "b")])
    with pytest.raises(UserError, match="--max-steps must be at least 1"):
        train.main(["--max-steps", "0", "--out", str(tmp_path / "m")])
    assert not (tmp_path / "m").exists()
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            train.main(["--device", "cuda", "--out", str(tmp_path / "c")])
    bad = tmp_path / "bad.pt"
    bad.write_bytes((run40 / "ckpt.pt").read_bytes()[:1000])
    with pytest.raises(UserError, match="not a readable checkpoint"):
        traverse.main([str(bad)])
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(UserError, match="not a checkpoint of train.py"):
        traverse.main([str(tmp_path / "foreign.pt")])


def test_batch_size_and_lr_defaults_follow_the_device(tmp_path):
    assert train.default_batch_size(torch.device("cpu")) == 64
    assert train.default_batch_size(torch.device("cuda")) == 2048
    assert train.default_lr(64) == 5e-4 and train.default_lr(256) == pytest.approx(1e-3)
    out = tmp_path / "defaults"
    assert train.main(["--max-steps", "1", "--out", str(out), "--device", "cpu"]) == 0
    args = train.load_checkpoint(out)["args"]
    assert (args["batch_size"], args["lr"]) == (64, 5e-4)
    out = tmp_path / "given"  # a batch size given alone: the rate follows it
    assert train.main(["--max-steps", "1", "--out", str(out), "--batch-size", "16"]) == 0
    assert train.load_checkpoint(out)["args"]["lr"] == pytest.approx(2.5e-4)


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "nan"
    with pytest.raises(UserError, match="loss is nan near step 5; stopped. no checkpoint"):
        train.main(["--max-steps", "40", "--out", str(out)] + FAST + ["--lr", "1e30"])
    assert not (out / "ckpt.pt").exists()
    # Diverging after a checkpoint leaves that checkpoint as it was.
    train.main(["--max-steps", "10", "--out", str(out)] + FAST)
    good = train.load_checkpoint(out)["model"]
    with pytest.raises(UserError, match="keeps the last good state"):
        train.main(["--resume", str(out), "--max-steps", "40", "--lr", "1e30"])
    after = train.load_checkpoint(out)
    assert after["step"] == 10 and all(torch.equal(good[k], after["model"][k]) for k in good)


def run_script(*args, **kw):
    return subprocess.run([sys.executable, *args], cwd=HERE, capture_output=True, text=True,
                          timeout=120, **kw)


def test_cli_errors_are_one_line_and_nonzero(tmp_path):
    for args, fragment in [
        (["traverse.py", str(tmp_path / "none.pt")], "no checkpoint at"),
        (["train.py", "--data", str(tmp_path / "none.npz"), "--out", str(tmp_path / "x")],
         "no dSprites file at"),
    ]:
        r = run_script(*args)
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and fragment in r.stderr, r.stderr


def test_sigterm_saves_a_checkpoint_to_resume_from(tmp_path):
    out = tmp_path / "term"
    proc = subprocess.Popen([sys.executable, "train.py", "--out", str(out), "--batch-size", "8",
                             "--log-every", "2"], cwd=HERE, stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / "losses.csv").exists() or len(rows(out)) < 2:
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "SIGTERM: stopped at step" in stdout
    step = train.load_checkpoint(out)["step"]
    assert step >= 4 and int(rows(out)[-1]["step"]) == step


def test_eval_every_logs_scores(tmp_path, monkeypatch, capsys):
    import evaluate

    tiny = dict(n_beta_train=40, n_beta_eval=20, n_fvae_train=40, n_fvae_eval=20,
                n_variance=300, n_mig=300)
    for key, value in tiny.items():  # the quick protocol, shrunk for a test
        monkeypatch.setitem(evaluate.PROTOCOL, key, value)
    for key in evaluate.QUICK:
        monkeypatch.setitem(evaluate.QUICK, key, tiny[key])
    out = tmp_path / "eval"
    train.main(["--max-steps", "6", "--eval-every", "1", "--out", str(out)] + FAST)
    with open(out / "scores.csv", newline="") as f:
        scores = list(csv.DictReader(f))
    assert [int(r["step"]) for r in scores] == [6]
    assert 0 <= float(scores[0]["mig"]) <= 1 and 0 <= float(scores[0]["beta_vae"]) <= 1
    assert "scores (quick protocol): beta_vae" in capsys.readouterr().out
