"""sweep.py: the grid, trials on Ray (one Ray for the whole test session, 2 CPUs), resume,
signals, failures, the lock and bad grids."""
import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

import checkpoint
import runlog
import sweep
import traverse
from cli import UserError
from conftest import HANG, HERE, rows, run_script

SHORT = ["--batch-size", "8", "--log-every", "5", "--ckpt-every", "10", "--eval", "off"]


@pytest.fixture(scope="session")
def ray_address():
    """Ray with 2 CPUs, started once for the session; sweeps in this process use it, and sweep
    processes started by a test connect to it through RAY_ADDRESS (as on a cluster)."""
    ray, _ = sweep.start_ray(None, 2)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def test_trials_run_at_the_sweeps_own_priority(ray_address):
    import ray

    # Ray's default would put every worker 15 below: starved by any other process.
    assert ray.get(ray.remote(lambda: os.nice(0)).remote()) == os.nice(0)


def names(argv):
    return [sweep.trial_name(c) for c in sweep.grid(sweep.build_parser().parse_args(argv))]


def test_flags_with_several_values_cross_and_zip_pairs_them():
    assert names(["f", "--objective", "H", "TC", "--seed", "0", "1", "--beta", "6"]) == [
        "beta6_H_z10_seed0", "beta6_H_z10_seed1", "beta6_TC_z10_seed0", "beta6_TC_z10_seed1"]
    assert names(["f", "--objective", "TC", "H", "B", "--beta", "6", "4", "4", "--seed", "0",
                  "1", "0", "--zip", "objective", "beta", "seed", "--c-max", "25"]) == [
        "beta6_TC_z10_seed0", "beta4_H_z10_seed1", "B_gamma1000_c25_z10_seed0"]
    # Flags that change the model are named; run length and logging are not.
    assert names(["f", "--lr", "1e-4", "--init", "he", "--max-steps", "9", "--epochs", "2"]) == [
        "beta4_H_z10_seed0_inithe_lr0.0001"]  # in train.py's flag order
    assert names(["f", "--circles", "0", "1", "--objective", "H", "B", "--zip", "circles",
                  "objective"]) == ["beta4_H_z10_seed0", "B_gamma1000_c25_z10_circles1_seed0"]
    assert names(["f", "--objective", "F", "B", "H"]) == [
        "F_gamma35_z10_seed0", "B_gamma1000_c25_z10_seed0", "beta4_H_z10_seed0"]


@pytest.mark.parametrize("argv, message", [
    (["--objective", "H", "TC", "--beta", "4", "6", "1", "--zip", "objective", "beta"],
     "--zip objective beta: these flags need the same number of values"),
    (["--zip", "seed"], "--zip seed: give --seed a list of values"),
    (["--beta", "4", "6", "--zip", "bogus"], "--zip bogus: train.py has no flag --bogus"),
    (["--beta", "4", "-1"], "trial beta-1_H_z10_seed0: --beta must be a finite number at least 0"),
    (["--objective", "H", "B", "--gamma", "500"],  # crossed, H gets γ too: zip them instead
     "trial beta4_H_z10_seed0: --gamma 500 does nothing under --objective H"),
    (["--objective", "TC", "--batch-size", "1"], "--batch-size must be a finite number at least 2"),
    (["--seed", "1", "1"], "two trials of the grid are both beta4_H_z10_seed1"),
    (["--objective", "TC", "--circles", "1"], "trial beta4_TC_z10_circles1_seed0: --circles "
     "goes with --objective H or B"),
    (["--cpus-per-trial", "0"], "--cpus-per-trial must be a finite number at least 1"),
    (["--bogus", "1"], "unrecognized arguments: --bogus 1"),
    (["--objective", "X"], "argument --objective: invalid choice: 'X'"),
])
def test_a_bad_grid_is_refused_before_ray_starts(tmp_path, capsys, argv, message):
    """In this process: no lock, no Ray, no trial, nothing printed (test_cli runs sweep.py to
    check that such an error is one line; so does the test below)."""
    with pytest.raises(UserError, match=re.escape(message)):
        sweep.main([str(tmp_path / "s"), *argv])
    assert capsys.readouterr().out == "" and not (tmp_path / "s").exists()


def test_a_bad_grid_ends_the_process_in_one_line(tmp_path):
    r = run_script("sweep.py", str(tmp_path / "s"), "--seed", "1", "1")
    assert r.returncode == 1 and r.stderr == ("sweep.py: error: two trials of the grid are "
                                              "both beta4_H_z10_seed1\n"), r.stderr
    assert r.stdout == "" and not (tmp_path / "s").exists()


def test_a_demo_sweep_trains_every_trial_and_a_rerun_touches_none(ray_address, tmp_path, capsys):
    folder = tmp_path / "demo"
    argv = [str(folder), "--objective", "H", "TC", "--seed", "0", "1", "--max-steps", "20"] + SHORT
    assert sweep.main(argv) == 0
    trials = [f"beta4_{objective}_z10_seed{seed}_batch_size8" for objective in ("H", "TC")
              for seed in (0, 1)]
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == trials
    for t in trials:
        assert int(rows(folder / t)[-1]["step"]) == 20
        assert json.loads((folder / t / "status.json").read_text()) == {"status": "done",
                                                                          "reason": ""}
    assert "mi" in rows(folder / trials[2])[0]  # the TC trials log β-TCVAE's parts
    table = (folder / "summary.csv").read_text().splitlines()
    assert len(table) == 1 + 4 and all(line.split(",")[0] in trials for line in table[1:])
    assert (folder / "summary.md").exists()
    before = {t: (folder / t / "ckpt.pt").read_bytes() for t in trials}
    capsys.readouterr()
    assert sweep.main(argv) == 0  # the same command again: everything is done
    assert "4 trials, 4 done, 0 to train or score" in capsys.readouterr().out
    assert all((folder / t / "ckpt.pt").read_bytes() == before[t] for t in trials)
    traverse.main([str(folder / trials[3]), "--out", str(tmp_path / "gif"), "--frames", "2"])
    assert len(list((tmp_path / "gif").glob("*/*.gif"))) == 40


def test_a_trial_is_scored_and_its_summary_row_is_its_metrics_file(ray_address, tmp_path):
    folder = tmp_path / "scored"
    assert sweep.main([str(folder), "--max-steps", "10", "--cpus-per-trial", "2"] + SHORT[:-2] +
                      ["--eval", "quick"]) == 0
    trial = folder / "beta4_H_z10_seed0_batch_size8"
    metrics = json.loads((trial / "metrics_quick.json").read_text())
    with open(folder / "summary.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["protocol"] == "quick" and int(row["step"]) == metrics["step"] == 10
    assert float(row["mig"]) == metrics["mig"]
    assert float(row["factor_vae"]) == metrics["factor_vae"]["eval_accuracy"]
    assert float(row["dci_disentanglement"]) == metrics["dci"]["disentanglement"]
    assert float(row["sap"]) == metrics["sap"]["sap"]


def test_a_sweeps_data_file_is_the_one_its_trials_are_scored_on(ray_address, tmp_path):
    """--data reaches evaluate.py too, not only train.py: a trained, unscored trial is scored on
    the sweep's file (here a missing one, so scoring fails naming it) instead of the renderer."""
    folder, missing = tmp_path / "data", tmp_path / "absent.npz"
    argv = [str(folder), "--max-steps", "10"] + SHORT  # --eval off: trained, not scored
    assert sweep.main(argv) == 0
    assert sweep.main(argv[:-1] + ["quick", "--data", str(missing)]) == 1
    status = json.loads((folder / "beta4_H_z10_seed0_batch_size8" / "status.json").read_text())
    assert status["status"] == "failed" and f"no dSprites file at {missing}" in status["reason"]


def test_a_failing_trial_is_marked_failed_with_its_reason_and_the_others_go_on(ray_address,
                                                                               tmp_path):
    folder = tmp_path / "nan"
    status = sweep.main([str(folder), "--lr", "1e30", "2e-3", "--max-steps", "20"] + SHORT)
    assert status == 1
    bad, good = folder / "beta4_H_z10_seed0_batch_size8_lr1e+30", (
        folder / "beta4_H_z10_seed0_batch_size8_lr0.002")
    failed = json.loads((bad / "status.json").read_text())
    assert failed["status"] == "failed"
    assert failed["reason"].startswith("train.py: error: loss is nan near step 5; stopped.")
    assert json.loads((good / "status.json").read_text())["status"] == "done"


def trial_processes(folder):
    """Process ids of train.py children working in `folder` (from /proc: any process owner)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if b"train.py" in cmd and any(str(folder).encode() in part for part in cmd):
            found.append(int(pid))
    return found


def start_sweep(folder, ray_address, *argv):
    env = dict(os.environ, RAY_ADDRESS=ray_address)
    return subprocess.Popen([sys.executable, "sweep.py", str(folder), *argv, *SHORT], cwd=HERE,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_until(condition):
    deadline = time.monotonic() + HANG  # a guard against a hang, not a speed check
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.5)


def logged(trial, n):
    return lambda: (trial / "losses.csv").exists() and len(rows(trial)) >= n


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_stops_every_trial_with_a_checkpoint_and_leaves_no_process(ray_address,
                                                                           tmp_path):
    folder = tmp_path / "term"
    proc = start_sweep(folder, ray_address, "--seed", "0", "1", "--max-steps", "100000")
    trials = [folder / f"beta4_H_z10_seed{s}_batch_size8" for s in (0, 1)]
    for trial in trials:
        wait_until(logged(trial, 2))
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=HANG)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "SIGTERM: trials stopped with their checkpoints" in out
    for trial in trials:
        step = int(rows(trial)[-1]["step"])
        assert runlog.read_columns(trial / "losses.csv")["step"][-1] == step
        assert checkpoint.load(trial)["step"] == step  # written at the stop
        assert "SIGTERM: stopped at step" in (trial / "train.log").read_text()
    assert trial_processes(folder) == [] and not (folder / sweep.STOP_FILE).exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG, /proc")
def test_a_killed_sweep_leaves_no_trial_training_and_the_same_command_finishes_it(ray_address,
                                                                                  tmp_path):
    folder = tmp_path / "killed"
    argv = ["--seed", "0", "1", "--max-steps", "10", "1500", "--zip", "seed", "max_steps"]
    proc = start_sweep(folder, ray_address, *argv)
    short, long = (folder / f"beta4_H_z10_seed{s}_batch_size8" for s in (0, 1))
    wait_until(lambda: (short / "status.json").exists())
    wait_until(logged(long, 2))
    finished = (short / "ckpt.pt").read_bytes()
    proc.kill()  # SIGKILL: the driver cannot stop anything itself
    proc.wait(timeout=HANG)
    wait_until(lambda: trial_processes(folder) == [])  # Ray ends the job's workers, they theirs
    last = rows(long)[-1]["step"]
    assert int(last) < 1500  # killed mid-training
    time.sleep(2)
    assert rows(long)[-1]["step"] == last  # nothing trains on unowned
    assert sweep.main([str(folder), *argv, *SHORT]) == 0  # the same command, in this process
    assert (short / "ckpt.pt").read_bytes() == finished
    assert int(rows(long)[-1]["step"]) == 1500
    assert checkpoint.load(long)["step"] == 1500


@pytest.mark.parametrize("flags, message", [
    (["--gpus-per-trial", "1"], "no Ray node has --cpus-per-trial 1 CPUs and --gpus-per-trial 1 "
                                "GPUs \\(nodes: 2 CPUs and 0 GPUs\\)"),
    (["--cpus-per-trial", "3"], "no Ray node has --cpus-per-trial 3 CPUs and --gpus-per-trial 0 "
                                "GPUs \\(nodes: 2 CPUs and 0 GPUs\\)"),
])
def test_a_trial_that_no_node_can_hold_is_refused_before_it_waits_for_ever(ray_address, tmp_path,
                                                                          flags, message):
    with pytest.raises(UserError, match=message):
        sweep.main([str(tmp_path / "s"), "--max-steps", "1", *flags])
    assert not (tmp_path / "s" / "beta4_H_z10_seed0").exists()  # nothing trained


def test_an_address_where_no_cluster_answers_is_refused_in_one_line(tmp_path, monkeypatch):
    with socket.socket() as s:  # bound, not listening: connections are refused, and the port
        s.bind(("127.0.0.1", 0))  # stays taken for the test
        port = s.getsockname()[1]
        with pytest.raises(UserError, match=f"no Ray cluster answers at 127.0.0.1:{port} "
                                            f"\\(--address; Connection refused\\): start one "
                                            f"there with `ray start --head`"):
            sweep.main([str(tmp_path / "s"), "--max-steps", "1", "--address",
                        f"127.0.0.1:{port}"])
        monkeypatch.setenv("RAY_ADDRESS", f"ray://127.0.0.1:{port}")
        with pytest.raises(UserError, match=f"answers at ray://127.0.0.1:{port} "
                                            f"\\(\\$RAY_ADDRESS; Connection refused\\)"):
            sweep.main([str(tmp_path / "s"), "--max-steps", "1"])
    assert not (tmp_path / "s" / "beta4_H_z10_seed0").exists()  # nothing trained


@pytest.mark.parametrize("address", ["head-node", "head:99999", "http://head:8265", "head:6379/x"])
def test_a_malformed_address_is_refused_in_one_line(tmp_path, address):
    with pytest.raises(UserError, match=f"--address must be HOST:PORT, ray://HOST:PORT, auto or "
                                        f"local, got '{re.escape(address)}'"):
        sweep.main([str(tmp_path / "s"), "--max-steps", "1", "--address", address])


def test_a_second_sweep_into_the_same_folder_is_refused(tmp_path):
    lock = runlog.RunLock(tmp_path, "sweep.lock", "a sweep", "choose another folder")
    try:
        with pytest.raises(UserError, match=f"{tmp_path} is in use by a sweep \\(process "
                                            f"{os.getpid()}\\); wait for it, stop it, or choose "
                                            f"another folder"):
            sweep.main([str(tmp_path), "--max-steps", "1"])
    finally:
        lock.release()
