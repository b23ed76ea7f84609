"""End to end on rendered data: train, checkpoint, resume, traverse, and the user's mistakes."""
import csv
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import pytest
import torch

import checkpoint
import train
import traverse
from dataset import UserError
from loss import linear_ramp
from model import BetaVAE

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
    ckpt = checkpoint.load(run40)
    assert ckpt["step"] == 40 and ckpt["args"]["beta"] == 4.0
    assert ckpt["model_args"] == {"latent_dim": 10, "channels": 1}
    model = checkpoint.rebuild_model(ckpt)
    assert not model.training
    mu, _ = model.encode(torch.zeros(2, 1, 64, 64))
    assert mu.shape == (2, 10)


def test_resume_continues_exactly(run40, tmp_path):
    out = tmp_path / "resumed"
    train.main(["--epochs", "1", "--max-steps", "25", "--out", str(out)] + FAST)
    assert checkpoint.load(out)["step"] == 25
    assert train.main(["--resume", str(out / "ckpt.pt"), "--max-steps", "40"]) == 0
    a, b = checkpoint.load(run40), checkpoint.load(out)
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
    with pytest.raises(UserError, match="--batch-size must be a finite number at least 1"):
        train.main(["--batch-size", "0", "--out", str(tmp_path / "b")])
    with pytest.raises(UserError, match="--max-steps must be a finite number at least 1"):
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


def test_batch_64_and_lr_5e4_by_default_on_every_device(tmp_path):
    assert train.default_lr(64) == 5e-4 and train.default_lr(256) == pytest.approx(1e-3)
    out = tmp_path / "defaults"
    assert train.main(["--max-steps", "1", "--out", str(out), "--device", "cpu"]) == 0
    args = checkpoint.load(out)["args"]
    assert (args["batch_size"], args["lr"], args["init"], args["warmup_steps"]) == (
        64, 5e-4, "pytorch", 0)
    assert train.build_parser().parse_args(["--device", "cuda"]).batch_size == 64
    out = tmp_path / "given"  # a batch size given alone: the rate follows it
    assert train.main(["--max-steps", "1", "--out", str(out), "--batch-size", "16"]) == 0
    assert checkpoint.load(out)["args"]["lr"] == pytest.approx(2.5e-4)


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "nan"
    with pytest.raises(UserError, match="loss is nan near step 5; stopped. no checkpoint"):
        train.main(["--max-steps", "40", "--out", str(out)] + FAST + ["--lr", "1e30"])
    assert not (out / "ckpt.pt").exists()
    # Diverging after a checkpoint leaves that checkpoint as it was.
    train.main(["--max-steps", "10", "--out", str(out)] + FAST)
    good = checkpoint.load(out)["model"]
    with pytest.raises(UserError, match="keeps the last good state"):
        train.main(["--resume", str(out), "--max-steps", "40", "--lr", "1e30"])
    after = checkpoint.load(out)
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


def test_output_piped_into_a_reader_that_stops_ends_without_a_traceback(run40):
    """`python checkpoint.py RUN | head -1`: the reader is gone before the script prints."""
    proc = subprocess.Popen([sys.executable, "checkpoint.py", str(run40)], cwd=HERE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # while the script still imports torch
    assert proc.wait(timeout=120) == 1
    assert proc.stderr.read() == ""


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
    step = checkpoint.load(out)["step"]
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
    from matplotlib.image import imread

    assert imread(out / "scores.png").shape == (420, 600, 4)  # the figure of the scores, 6 x 4.2 in


def test_scores_figure_draws_every_row_and_skips_an_empty_log(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    drawn, plot = {}, Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda ax, x, y, *a, label, **k: drawn.setdefault(
        label, (list(x), list(y))) and plot(ax, x, y, *a, label=label, **k))
    path = tmp_path / "scores.csv"
    path.write_text("step,beta_vae,factor_vae,mig,mig_no_shape,seconds\n")
    assert train.read_columns(path) == {}
    train.plot_scores(path, tmp_path / "scores.png")  # a log with no row yet: no figure
    assert not (tmp_path / "scores.png").exists() and drawn == {}
    with open(path, "a") as f:
        f.write("57600,0.85,0.61,0.25,0.3,60\n115200,0.88,0.64,0.31,0.33,58\n")
    train.plot_scores(path, tmp_path / "scores.png")
    assert drawn == {"β-VAE score": ([57600, 115200], [0.85, 0.88]),
                     "FactorVAE score": ([57600, 115200], [0.61, 0.64]),
                     "MIG": ([57600, 115200], [0.25, 0.31]),
                     "MIG without shape": ([57600, 115200], [0.3, 0.33])}
    assert (tmp_path / "scores.png").stat().st_size > 10_000


def test_resume_after_rows_logged_past_the_checkpoint_matches_a_straight_run(run40, tmp_path):
    """A run that logged rows after its last checkpoint (killed before the next one) resumes
    from the checkpoint: the rows past it are dropped and trained again, as in a straight run."""
    out = tmp_path / "crashed"
    train.main(["--epochs", "1", "--max-steps", "20", "--out", str(out)] + FAST)
    at_20 = (out / "ckpt.pt").read_bytes()
    train.main(["--resume", str(out), "--max-steps", "35"])  # rows 25..35 logged
    (out / "ckpt.pt").write_bytes(at_20)  # ... but the checkpoint still at step 20
    assert int(rows(out)[-1]["step"]) == 35
    assert train.main(["--resume", str(out), "--max-steps", "40"]) == 0
    assert rows(out) == rows(run40)
    a, b = checkpoint.load(run40)["model"], checkpoint.load(out)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_applies_flags_given_with_their_default_value(tmp_path, monkeypatch):
    """--epochs 30, --eval-every 0 and --beta 4 are the parser's defaults: given on the command
    line they still count (resumable flags replace what the stored run had, others conflict)."""
    monkeypatch.setattr(train, "log_scores", lambda *a: None)  # scoring is not what is tested
    out = tmp_path / "r"
    train.main(["--epochs", "2", "--max-steps", "2", "--eval-every", "1", "--beta", "2",
                "--out", str(out)] + FAST)
    args, _ = train.resolve_args(*parse(["--resume", str(out), "--epochs", "30",
                                         "--eval-every", "0"]))
    assert (args.epochs, args.eval_every, args.max_steps) == (30, 0, 2)
    args, _ = train.resolve_args(*parse(["--resume", str(out)]))  # nothing given: as stored
    assert (args.epochs, args.eval_every) == (2, 1)
    with pytest.raises(UserError, match=r"--beta 4.0 conflicts with the run being resumed \(2.0\)"):
        train.resolve_args(*parse(["--resume", str(out), "--beta", "4"]))
    args, _ = train.resolve_args(*parse(["--resume", str(out), "--beta", "2"]))  # the same: fine
    train.main(["--resume", str(out), "--epochs", "30", "--eval-every", "0", "--max-steps", "4"])
    stored = checkpoint.load(out)
    assert (stored["step"], stored["args"]["epochs"], stored["args"]["eval_every"]) == (4, 30, 0)


def parse(argv):
    parser = train.build_parser()
    return parser.parse_args(argv), parser, argv


def test_checkpoint_of_the_earlier_code_resumes_traverses_and_evaluates(run40, tmp_path):
    """Checkpoints written before --init and --warmup-steps existed (and with an 'epoch' field):
    they were trained with PyTorch's default init and no warm-up, and still load everywhere."""
    import evaluate

    old = checkpoint.load(run40)
    for key in ("init", "warmup_steps"):
        del old["args"][key]
    old["epoch"] = old["step"] / 46080
    run = tmp_path / "old"
    run.mkdir()
    torch.save(old, run / "ckpt.pt")
    (run / "losses.csv").write_bytes((run40 / "losses.csv").read_bytes())
    assert train.main(["--resume", str(run), "--max-steps", "45"]) == 0
    new = checkpoint.load(run)
    assert new["step"] == 45 and (new["args"]["init"], new["args"]["warmup_steps"]) == (
        "pytorch", 0)
    torch.save(old, run / "ckpt.pt")
    traverse.main([str(run), "--out", str(tmp_path / "gif"), "--frames", "3"])
    assert len(list((tmp_path / "gif").glob("*/*.gif"))) == 40
    assert evaluate.main([str(run), "--quick"], n_beta_train=40, n_beta_eval=20,
                         n_fvae_train=40, n_fvae_eval=20, n_variance=300, n_mig=300) == 0


def test_objective_b_follows_the_capacity_schedule(tmp_path):
    """Objective B trained: every row's c is C(step) of its step, and its loss is
    recon + γ·|KL − C| (one step per row)."""
    out = tmp_path / "b"
    train.main(["--objective", "B", "--gamma", "50", "--c-max", "10", "--c-steps", "8",
                "--max-steps", "12", "--out", str(out)] + FAST + ["--log-every", "1"])
    log = rows(out)
    assert len(log) == 12
    for r in log:
        step = int(r["step"])  # the row's step is the (step)-th update, made at C(step - 1)
        assert float(r["c"]) == pytest.approx(linear_ramp(step - 1, 10, 8), abs=1e-3)
        expected = float(r["recon"]) + 50 * abs(float(r["kl"]) - float(r["c"]))
        assert float(r["loss"]) == pytest.approx(expected, abs=0.05)
    assert len({r["c"] for r in log}) == 9  # 0, 1.25, ..., 10


def test_warmup_ramps_beta(tmp_path):
    """--warmup-steps: the update of step s weighs KL by β·min(s / N, 1) (one step per row)."""
    out = tmp_path / "w"
    train.main(["--beta", "4", "--warmup-steps", "4", "--max-steps", "6", "--out", str(out)]
               + FAST + ["--log-every", "1"])
    for r in rows(out):
        beta = linear_ramp(int(r["step"]) - 1, 4.0, 4)
        assert float(r["loss"]) == pytest.approx(float(r["recon"]) + beta * float(r["kl"]),
                                                 abs=1e-3)


@pytest.mark.filterwarnings("ignore:Creating legend")  # the fake clock makes it look slow
def test_progress_line_shows_elapsed_time_left_and_first_step(tmp_path, capsys, monkeypatch):
    """Time left = steps left x seconds per step so far; a clock that ticks 7 s at each reading
    makes the expected figures exact."""
    ticks = iter(range(0, 10**6, 7))
    monkeypatch.setattr(train.time, "perf_counter", lambda: next(ticks))
    train.main(["--max-steps", "20", "--out", str(tmp_path / "p")] + FAST)
    out = capsys.readouterr().out
    assert re.search(r"first step done \d+\.\d s after start", out)
    times = [re.search(r"\| [\d,]+ img/s \| (\d+):(\d\d) elapsed, (\d+):(\d\d) left$", s)
             for s in out.splitlines() if " step " in s and "img/s" in s]
    assert len(times) == 4
    for k, m in enumerate(times, start=1):  # after 5k of 20 steps
        elapsed, left = int(m[1]) * 60 + int(m[2]), int(m[3]) * 60 + int(m[4])
        assert elapsed > 0 and left == round(elapsed * (20 - 5 * k) / (5 * k)), (k, m[0])


def test_traverse_sweeps_the_one_latent_asked_for():
    torch.manual_seed(0)
    model = BetaVAE().eval()
    x = torch.rand(1, 1, 64, 64)
    seen = []
    model.decode = lambda z: seen.append(z.clone()) or BetaVAE.decode(model, z)
    values = torch.linspace(-3, 3, 7)
    traverse.traverse(model, x, 4, values)
    z = seen[0]
    mu, _ = model.encode(x)
    assert torch.equal(z[:, 4], values)
    others = [k for k in range(10) if k != 4]
    assert torch.equal(z[:, others], mu[:, others].expand(7, 9))


LOCKED = "is in use by a run"


def test_a_second_run_into_a_busy_folder_is_refused_and_a_stale_lock_taken_over(tmp_path):
    out = tmp_path / "busy"
    first = subprocess.Popen([sys.executable, "train.py", "--out", str(out), "--batch-size", "8",
                              "--log-every", "2"], cwd=HERE, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (out / "losses.csv").exists() or len(rows(out)) < 1:  # before any ckpt.pt
            assert time.time() < deadline and first.poll() is None
            time.sleep(0.2)
        assert not (out / "ckpt.pt").exists()
        second = run_script("train.py", "--out", str(out), "--max-steps", "2")
        assert second.returncode == 1 and second.stderr.count("\n") == 1, second.stderr
        assert f"{out} {LOCKED} (process {first.pid})" in second.stderr
        first.kill()  # SIGKILL: no chance to release the lock
        first.wait(timeout=60)
    finally:
        first.kill()
    assert (out / "train.lock").read_text() == str(first.pid)
    again = run_script("train.py", "--out", str(out), "--max-steps", "2", "--batch-size", "8")
    assert again.returncode == 0, again.stderr
    assert f"taking over the lock of a run that is gone (process {first.pid})" in again.stdout
    assert not (out / "train.lock").exists()  # released on exit


@pytest.mark.parametrize("flags, message", [
    (["--beta", "-1"], "--beta must be a finite number at least 0, got -1.0"),
    (["--beta", "nan"], "--beta must be a finite number at least 0, got nan"),
    (["--beta", "inf"], "--beta must be a finite number at least 0, got inf"),
    (["--lr", "nan"], "--lr must be a finite number above 0, got nan"),
    (["--lr", "0"], "--lr must be a finite number above 0, got 0.0"),
    (["--objective", "B", "--gamma", "-5"], "--gamma must be a finite number above 0, got -5.0"),
    (["--c-max", "-1"], "--c-max must be a finite number at least 0, got -1.0"),
    (["--warmup-steps", "-1"], "--warmup-steps must be a finite number at least 0, got -1"),
    (["--epochs", "0"], "--epochs must be a finite number at least 1, got 0"),
    (["--eval-every", "-2"], "--eval-every must be a finite number at least 0, got -2"),
])
def test_nonsense_numbers_end_in_one_line_before_any_work(tmp_path, flags, message):
    start = time.time()
    r = run_script("train.py", "--out", str(tmp_path / "x"), *flags)
    assert time.time() - start < 10
    assert r.returncode == 1 and r.stderr == f"train.py: error: {message}\n", r.stderr
    assert r.stdout == "" and not (tmp_path / "x").exists()


@pytest.mark.parametrize("args, message", [
    (["traverse.py", "CKPT", "--frames", "1"], "--frames must be a finite number at least 2"),
    (["traverse.py", "CKPT", "--limit", "-3"], "--limit must be a finite number above 0"),
    (["traverse.py", "CKPT", "--samples", "3,737280"], "--samples must be comma-separated"),
    (["traverse.py", "CKPT", "--samples", "a,b"], "--samples must be comma-separated"),
    (["evaluate.py", "CKPT", "--batch-size", "0"], "--batch-size must be a finite number at"),
    (["evaluate.py", "CKPT", "--seed", "0", "-1"], "--seed must be a finite number at least 0"),
])
def test_bad_numbers_in_traverse_and_evaluate(run40, args, message):
    r = run_script(*[str(run40) if a == "CKPT" else a for a in args])
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    assert r.stdout == ""
