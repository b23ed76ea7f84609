"""train.py end to end on rendered data: a run, resume, objectives, signals, the lock, and the
user's mistakes."""
import csv
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import checkpoint
import dataset
import train
from checkpoint import CheckpointError
from cli import UserError
from conftest import FAST, HANG, HERE, rows, run_script
from loss import linear_ramp


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


def test_user_mistakes_raise_clear_errors(run40, tmp_path):
    with pytest.raises(UserError, match="already holds a run"):
        train.main(["--out", str(run40)])
    with pytest.raises(UserError, match="--beta 8.0 conflicts with the run being resumed"):
        train.main(["--resume", str(run40), "--beta", "8"])
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        train.main(["--resume", str(tmp_path / "nothing")])
    with pytest.raises(UserError, match="--batch-size must be a finite number at least 1"):
        train.main(["--batch-size", "0", "--out", str(tmp_path / "b")])
    with pytest.raises(UserError, match="--max-steps must be a finite number at least 1"):
        train.main(["--max-steps", "0", "--out", str(tmp_path / "m")])
    assert not (tmp_path / "m").exists()
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            train.main(["--device", "cuda", "--out", str(tmp_path / "c")])


def test_a_resume_that_cannot_go_on_is_refused_before_any_work(run40, tmp_path):
    """Too few --epochs or --max-steps for the checkpoint's step, or a stored state that does
    not fit the model, the optimizer or the RNG: one-line errors; the run is left as it was."""
    ckpt = checkpoint.load(run40)

    def copy(name, **changes):
        (tmp_path / name).mkdir()
        checkpoint.save(tmp_path / name / "ckpt.pt", {**ckpt, **changes})
        return tmp_path / name

    before = (run40 / "ckpt.pt").read_bytes()
    with pytest.raises(UserError, match="--max-steps 30 ends at step 30, before the "
                                        "checkpoint's step 40"):
        train.main(["--resume", str(run40), "--max-steps", "30"])
    assert (run40 / "ckpt.pt").read_bytes() == before
    late = copy("late", step=50_000)  # --epochs 1 at batch 16: 46,080 steps
    with pytest.raises(UserError, match="--epochs 1 ends at step 46,080, before the "
                                        "checkpoint's step 50,000"):
        train.main(["--resume", str(late)])
    for name, changes, error in [("rng", {"rng": {"torch": 5}}, "TypeError"),
                                 ("opt", {"optimizer": {"state": {}, "param_groups": []}},
                                  "ValueError loaded state dict has a different number")]:
        out = copy(name, **changes)
        with pytest.raises(CheckpointError, match=f"cannot be resumed: {error}"):
            train.main(["--resume", str(out), "--max-steps", "45"])
        assert sorted(p.name for p in out.iterdir()) == ["ckpt.pt"]


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


def test_a_dead_encoder_stops_training(tmp_path):
    """An encoder whose ReLUs are all off gives every image the same code and gets no gradient
    again (what --objective B does to PyTorch's init): training stops with one line."""
    out = tmp_path / "dead"
    train.main(["--max-steps", "10", "--out", str(out)] + FAST)
    ckpt = checkpoint.load(out)
    ckpt["model"]["encoder.4.bias"].fill_(-1e4)  # the third conv: every output below zero
    checkpoint.save(out / "ckpt.pt", ckpt)
    model = checkpoint.rebuild_model(checkpoint.load(out))
    mu, _ = model.encode(torch.rand(8, 1, 64, 64))
    assert torch.equal(mu, mu[:1].expand_as(mu))  # the state the check must see
    with pytest.raises(UserError, match="the encoder died near step 15: it gives every image"):
        train.main(["--resume", str(out), "--max-steps", "40"])


def wait_for_rows(out, n, proc):
    """Until the run in `proc` has logged n rows (it must not end before)."""
    deadline = time.monotonic() + HANG  # a guard against a hang, not a speed check
    while not (out / "losses.csv").exists() or len(rows(out)) < n:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)


def test_sigterm_saves_a_checkpoint_to_resume_from(tmp_path):
    out = tmp_path / "term"
    proc = subprocess.Popen([sys.executable, "train.py", "--out", str(out), "--batch-size", "8",
                             "--log-every", "2"], cwd=HERE, stdout=subprocess.PIPE, text=True)
    wait_for_rows(out, 2, proc)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=HANG)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "SIGTERM: stopped at step" in stdout
    step = checkpoint.load(out)["step"]
    assert step >= 4 and int(rows(out)[-1]["step"]) == step


def test_eval_every_logs_scores(tmp_path, capsys, tiny_protocol):
    out = tmp_path / "eval"
    train.main(["--max-steps", "6", "--eval-every", "1", "--out", str(out)] + FAST)
    with open(out / "scores.csv", newline="") as f:
        scores = list(csv.DictReader(f))
    assert [int(r["step"]) for r in scores] == [6]
    assert 0 <= float(scores[0]["mig"]) <= 1 and 0 <= float(scores[0]["beta_vae"]) <= 1
    assert "scores (quick protocol): beta_vae" in capsys.readouterr().out
    from matplotlib.image import imread

    assert imread(out / "scores.png").shape == (420, 600, 4)  # the figure of the scores, 6 x 4.2 in


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
    monkeypatch.setattr(train.runlog, "log_scores", lambda *a: None)  # not what is tested
    monkeypatch.setattr(train.evaluate, "evaluate_model", lambda *a, **k: None)
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


LOCKED = "is in use by a run"


def test_a_second_run_into_a_busy_folder_is_refused_and_a_stale_lock_taken_over(tmp_path):
    out = tmp_path / "busy"
    first = subprocess.Popen([sys.executable, "train.py", "--out", str(out), "--batch-size", "8",
                              "--log-every", "2", "--ckpt-every", "1000000"], cwd=HERE,
                             stdout=subprocess.PIPE, text=True)
    try:
        wait_for_rows(out, 1, first)
        assert not (out / "ckpt.pt").exists()  # none until the epoch's end (92,160 steps)
        second = run_script("train.py", "--out", str(out), "--max-steps", "2")
        assert second.returncode == 1 and second.stderr.count("\n") == 1, second.stderr
        assert f"{out} {LOCKED} (process {first.pid})" in second.stderr
        first.kill()  # SIGKILL: no chance to release the lock
        first.wait(timeout=HANG)
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
    (["--c-max", "10"], "--c-max 10 does nothing under --objective H"),  # loss.py's H: no C
    (["--objective", "TC", "--c-steps", "50"], "--c-steps 50 does nothing under --objective TC"),
    (["--objective", "B", "--beta", "8"], "--beta 8 does nothing under --objective B"),
    (["--objective", "B", "--warmup-steps", "9"],
     "--warmup-steps 9 does nothing under --objective B"),
    (["--circles", "-1"], "--circles must be a finite number at least 0 and at most 10, got -1"),
    (["--latent-dim", "3", "--circles", "4"],
     "--circles must be a finite number at least 0 and at most 3, got 4"),
    (["--objective", "TC", "--circles", "1"], "--circles goes with --objective H or B; TC's "
     "estimate of the total correlation has not been tried on circles"),
    (["--objective", "F", "--circles", "1"], "--circles goes with --objective H or B; F's "
     "estimate of the total correlation has not been tried on circles"),
    (["--objective", "F", "--beta", "8"], "--beta 8 does nothing under --objective F"),
    (["--objective", "F", "--c-max", "5"], "--c-max 5 does nothing under --objective F"),
    (["--objective", "F", "--gamma", "0"], "--gamma must be a finite number above 0, got 0.0"),
    (["--objective", "F", "--batch-size", "368641"],  # its second batch: half an epoch on
     "--batch-size must be a finite number at least 1 and at most 368640, got 368641"),
    (["--gamma", "5"], "--gamma 5 does nothing under --objective H"),
])
def test_nonsense_numbers_are_refused_before_any_work(tmp_path, capsys, flags, message):
    """Before any work: nothing printed, no run folder made (no data drawn, no lock taken).
    In this process: test_cli runs each script to check that such an error is one line."""
    with pytest.raises(UserError) as e:
        train.main(["--out", str(tmp_path / "x"), *flags])
    assert str(e.value) == message
    assert capsys.readouterr().out == "" and not (tmp_path / "x").exists()


def test_a_nonsense_number_ends_the_process_in_one_line(tmp_path):
    r = run_script("train.py", "--out", str(tmp_path / "x"), "--circles", "11")
    assert r.returncode == 1 and r.stderr == ("train.py: error: --circles must be a finite "
                                              "number at least 0 and at most 10, got 11\n")
    assert r.stdout == "" and not (tmp_path / "x").exists()


def straight_and_resumed(tmp_path, flags):
    """A run of 20 steps with `flags`, and one of 10 resumed to 20: (their folders, their
    checkpoints)."""
    flags = ["--epochs", "1"] + flags + FAST
    straight, split = tmp_path / "straight", tmp_path / "split"
    train.main(flags + ["--max-steps", "20", "--out", str(straight)])
    train.main(flags + ["--max-steps", "10", "--out", str(split)])
    assert train.main(["--resume", str(split), "--max-steps", "20"]) == 0
    return straight, split, checkpoint.load(straight), checkpoint.load(split)


def test_a_circle_run_trains_resumes_exactly_and_keeps_its_circles(tmp_path):
    """--circles 1: named in the run, stored in model_args; 10 steps then a resume to 20 equal a
    straight run of 20 (the Beta draws of the sampler come from the saved RNG state); a resume
    keeps the circles and refuses another count."""
    straight, split, a, b = straight_and_resumed(tmp_path, ["--circles", "1"])
    assert a["model_args"] == {"latent_dim": 10, "channels": 1, "circles": 1}
    assert b["step"] == 20 and b["model_args"] == a["model_args"] and b["args"]["circles"] == 1
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert rows(split) == rows(straight) and float(rows(straight)[-1]["kl_z0"]) > 0
    assert train.default_run_name(parse(["--circles", "1"])[0]) == "beta4_H_z10_circles1_seed0"
    with pytest.raises(UserError, match=r"--circles 2 conflicts with the run being resumed \(1\)"):
        train.main(["--resume", str(split), "--circles", "2"])


def test_factorvae_trains_resumes_exactly_and_logs_its_discriminator(tmp_path, tiny_protocol,
                                                                    capsys):
    """--objective F: γ 35 and the paper's learning rate by default; the discriminator and its
    optimizer are in ckpt.pt, so 10 steps and a resume to 20 equal a straight run of 20, the
    discriminator too; losses.csv has its TC estimate, loss and accuracy, and the progress line
    the same TC and accuracy; the checkpoint rebuilds, scores and traverses like any other."""
    args = parse(["--objective", "F"])[0]
    assert train.fill_defaults(args).gamma == 35.0 and train.default_lr(64, "F") == 1e-4
    assert train.default_run_name(args) == "F_gamma35_z10_seed0"
    straight, split, a, b = straight_and_resumed(tmp_path, ["--objective", "F"])
    assert a["args"]["gamma"] == 35.0 and b["step"] == 20
    for key in ("model", "discriminator"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert a["disc_optimizer"]["state"][0]["step"] == 20
    log = rows(split)
    assert log == rows(straight) and list(log[0])[6:9] == ["tc", "disc_loss", "disc_acc"]
    assert all(0 <= float(r["disc_acc"]) <= 1 for r in log)
    shown = re.findall(r" step (\d+)/\d+ .* tc (-?[\d.]+) D acc ([\d.]+) \|",
                       capsys.readouterr().out)
    assert len(shown) == 8  # every 5 steps of 20, then 10 and 10 more
    for step, tc, acc in shown[-4:]:  # the split run's, as its losses.csv has them (rounded)
        row = log[int(step) // 5 - 1]
        assert int(row["step"]) == int(step)
        assert float(tc) == pytest.approx(float(row["tc"]), abs=6e-4), step
        assert float(acc) == pytest.approx(float(row["disc_acc"]), abs=6e-4), step
    import evaluate
    import traverse
    model = checkpoint.rebuild_model(b)
    assert 0 <= evaluate.evaluate_model(model, dataset.load(None), quick=True)["mig"] <= 1
    traverse.main([str(split), "--out", str(tmp_path / "gif"), "--frames", "2"])
    assert len(list((tmp_path / "gif").glob("*/*.gif"))) == 40


def test_a_non_finite_discriminator_is_never_checkpointed(tmp_path, monkeypatch):
    """FactorVAE's discriminator steps after the step's loss is logged: if its weights turn
    non-finite on a checkpoint step, training stops and ckpt.pt keeps the last good state."""
    out = tmp_path / "F"
    train.main(["--objective", "F", "--max-steps", "10", "--out", str(out)] + FAST)
    good = checkpoint.load(out)["discriminator"]
    critic_step, calls = train.critic_step, []

    def corrupted(model, critic, *args):  # the 10th step of the resumed run: step 20
        parts = critic_step(model, critic, *args)
        calls.append(1)
        if len(calls) == 10:
            with torch.no_grad():
                next(critic[0].parameters()).fill_(float("nan"))
        return parts

    monkeypatch.setattr(train, "critic_step", corrupted)
    with pytest.raises(UserError, match="discriminator weights became non-finite near step 20; "
                                        "stopped. .* keeps the last good state"):
        train.main(["--resume", str(out), "--max-steps", "30"])
    after = checkpoint.load(out)
    assert after["step"] == 10 and all(torch.equal(good[k], after["discriminator"][k])
                                       for k in good)


def test_a_factorvae_step_keeps_the_two_gradients_apart(monkeypatch):
    """After one step, the VAE's gradients are those of its own loss alone (the discriminator's
    loss adds nothing to them), and the discriminator's its own loss's (train_step at lr 0,
    once with the critic's step and once without)."""
    import discriminator
    from model import BetaVAE

    torch.manual_seed(0)
    model, disc = BetaVAE(), discriminator.Discriminator(10, hidden=64, layers=2)
    opt, disc_opt = (torch.optim.SGD(m.parameters(), lr=0.0) for m in (model, disc))
    imgs, imgs2 = (torch.randint(0, 2, (8, 64, 64), dtype=torch.uint8) for _ in range(2))
    step = lambda critic: train.train_step(  # noqa: E731
        model, opt, imgs, critic, imgs2, objective="F", gamma=35.0, dataset_size=737_280)
    torch.manual_seed(1)
    parts = step((disc, disc_opt))
    with_critic = [p.grad.clone() for p in model.parameters()]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in disc.parameters())
    torch.manual_seed(1)
    z = model.reparameterize(*model.encode(dataset.as_input(imgs)))  # the step's sample
    monkeypatch.setattr(train, "critic_step", lambda *a: {})
    torch.manual_seed(1)
    step((disc, disc_opt))
    assert all(torch.equal(g, p.grad) for g, p in zip(with_critic, model.parameters()))
    torch.testing.assert_close(parts["tc"], discriminator.tc_estimate(disc, z).detach())
