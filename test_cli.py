"""cli.py: number checks, and user mistakes ending in one line with exit status 1."""
import subprocess
import sys

import pytest

import cli
from conftest import HANG, HERE, run_script


def test_require_names_the_flag_and_its_range():
    cli.require("beta", 0.0, 0)
    cli.require("lr", 1e-4, 0, strict=True)
    for value, low, strict, message in [
            (-1.0, 0, False, "--beta must be a finite number at least 0, got -1.0"),
            (float("nan"), 0, False, "got nan"), (float("inf"), 0, False, "got inf"),
            (0.0, 0, True, "--beta must be a finite number above 0, got 0.0")]:
        with pytest.raises(cli.UserError, match=message):
            cli.require("beta", value, low, strict=strict)
    with pytest.raises(cli.UserError, match="--max-frames must be .* at most 200, got 201"):
        cli.require("max_frames", 201, 2, high=200)


def test_seeds_are_distinct_integers_in_range():
    cli.require_seeds([0, 1, 2**31 - 1])
    with pytest.raises(cli.UserError, match="--seed must be a finite number at least 0 and at "
                                            "most 2147483647, got 2147483648"):
        cli.require_seeds([0, 2**31])
    with pytest.raises(cli.UserError, match="--seed values must differ, got 1 2 1"):
        cli.require_seeds([1, 2, 1])


def test_device_choice_names_what_is_missing(monkeypatch):
    assert cli.pick_device("cpu").type == "cpu"
    monkeypatch.setattr(cli.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(cli.torch.backends.mps, "is_available", lambda: False)
    assert cli.pick_device("auto").type == "cpu"
    with pytest.raises(cli.UserError, match="--device cuda: CUDA is not available here"):
        cli.pick_device("cuda")
    with pytest.raises(cli.UserError, match="--device mps: MPS is not available here"):
        cli.pick_device("mps")


def test_cli_errors_are_one_line_and_nonzero(tmp_path):
    for args, fragment in [
        (["traverse.py", str(tmp_path / "none.pt")], "no checkpoint at"),
        (["train.py", "--data", str(tmp_path / "none.npz"), "--out", str(tmp_path / "x")],
         "no dSprites file at"),
        (["evaluate.py", str(tmp_path), "--seed", "0", "-1"], "--seed must be a finite number"),
        (["checkpoint.py"], "the following arguments are required: ckpt"),
        (["dataset.py", "--bogus"], "unrecognized arguments: --bogus"),
        (["train.py", "--objective", "X"], "argument --objective: invalid choice: 'X'"),
        (["train.py", "--out", str(tmp_path / "a_file" / "run")], "a_file is a file, not a folder"),
    ]:
        (tmp_path / "a_file").touch()
        r = run_script(*args)
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and fragment in r.stderr, r.stderr


@pytest.mark.parametrize("script, positional", [
    ("train", []), ("bench", []), ("dataset", []), ("evaluate", ["x"]), ("traverse", ["x"]),
    ("sweep", ["x"]), ("summary", ["x"]), ("checkpoint", ["x"])])
def test_argparse_mistakes_are_user_errors_and_help_works(script, positional, capsys):
    """Every script's parser turns a flag it does not know into the one-line error above (not
    argparse's usage and status 2), and --help prints the help and exits 0."""
    main = __import__(script).main
    with pytest.raises(Exception, match="unrecognized arguments: --bogus$") as e:
        main([*positional, "--bogus"])
    assert cli.user_mistake(e.value)
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "--help" in capsys.readouterr().out


def test_a_damaged_json_file_is_named_in_one_line(tmp_path):
    (tmp_path / "cut.json").write_text('{"step": 3')  # a write cut short
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "good.json").write_text('{"step": 3}')
    assert cli.read_json(tmp_path / "good.json") == {"step": 3}
    with pytest.raises(cli.UserError, match=r"cut.json is damaged \(Expecting ',' delimiter"):
        cli.read_json(tmp_path / "cut.json")
    with pytest.raises(cli.UserError, match="list.json is damaged: a JSON object expected, got list"):
        cli.read_json(tmp_path / "list.json")


def test_an_output_path_through_a_file_is_refused(tmp_path):
    (tmp_path / "f").touch()
    cli.require_folder("--out", tmp_path / "new" / "deeper")  # not there yet: fine
    for path in (tmp_path / "f", tmp_path / "f" / "run"):
        with pytest.raises(cli.UserError, match=f"--out {path}: {tmp_path / 'f'} is a file"):
            cli.require_folder("--out", path)


def test_output_piped_into_a_reader_that_stops_ends_without_a_traceback(run40):
    """`python checkpoint.py RUN | head -1`: the reader is gone before the script prints."""
    proc = subprocess.Popen([sys.executable, "checkpoint.py", str(run40)], cwd=HERE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # while the script still imports torch
    assert proc.wait(timeout=HANG) == 1
    assert proc.stderr.read() == ""
