"""Train a grid of runs on Ray: objectives, β and seeds, on this machine or on a cluster.

    python sweep.py sweeps/demo --objective H TC --seed 0 1 --max-steps 200 --eval quick
    python sweep.py sweeps/pairs --objective TC H TC --beta 6 4 6 --seed 0 1 1 \\
        --zip objective beta seed --epochs 30 --eval-every 5     # paired, not crossed

Every train.py flag takes one or more values: several values span the grid (the cross product
of all such flags), one value applies to every trial; --zip pairs the value lists of the flags
it names one to one instead (they must be equally long). Each trial is an ordinary run folder,
FOLDER/<name from its flags> (train.py's default name), trained by `python train.py` and then
scored by `python evaluate.py` (--eval), on the same --data. The folder's summary (summary.py)
is rewritten as each trial ends.

Rerunning the same command continues the sweep: finished trials are left alone, the others
resume from their checkpoints. Ctrl-C or SIGTERM stops every trial with a checkpoint. Ray runs
the trials: locally by default (ray.init() on this machine, --cpus-per-trial cores each), or on
the cluster at --address / $RAY_ADDRESS, where FOLDER and this repository must be on storage
that every node sees, at the same path.

Why child processes: each trial runs train.py exactly as a user would, in a process of its own,
so that its signal handling (checkpoint on SIGTERM), its process-wide speed settings and its
thread count hold as they do there, a crash takes down one trial and not the Ray worker, and its
output goes to FOLDER/<trial>/train.log. The child is tied to its Ray worker (Linux: it receives
SIGTERM when the worker dies), so a trial never trains on unowned after its sweep is gone.
"""
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import cli
import dataset
import runlog
import summary
import train

HERE = Path(__file__).resolve().parent
# Flags that say how long or how a run is logged, not what it is: left out of trial names.
NOT_IN_NAME = {"epochs", "max_steps", "device", "ckpt_every", "log_every", "eval_every", "data",
               "download"}
EVAL = {"full": ["--seed", "0", "1", "2"], "quick": ["--quick"], "off": None}
STATUS_EVERY = 60  # seconds between progress reports while trials run
CONNECT_TIMEOUT = 10  # seconds to wait for --address to answer
POLL = 5  # seconds between looks at a stop request: seldom, so as to take no CPU from trials
PR_SET_PDEATHSIG = 1  # prctl option, <linux/prctl.h>
STOP_FILE = "sweep.stop"  # in the sweep folder: its trials checkpoint and stop (shared storage)


# ---------------------------------------------------------------- the grid

def build_parser():
    """train.py's flags, each taking one or more values, and the sweep's own."""
    p = cli.parser("Train a grid of train.py runs on Ray.")
    p.add_argument("folder", help="the sweep folder; one run folder per trial inside")
    p.add_argument("--zip", nargs="+", default=[], metavar="FLAG",
                   help="pair these flags' value lists one to one instead of crossing them "
                        "(default: none, all crossed)")
    p.add_argument("--eval", default="full", choices=list(EVAL),
                   help="score each finished trial with evaluate.py: full (seeds 0 1 2), quick "
                        "(--quick) or off (default: full)")
    p.add_argument("--cpus-per-trial", type=int, default=1,
                   help="CPU cores (and torch threads) per trial (default: 1)")
    p.add_argument("--gpus-per-trial", type=float, default=0.0,
                   help="GPUs per trial, fractions share one (default: 0)")
    p.add_argument("--address", default=None,
                   help="a running Ray cluster: HOST:PORT, ray://HOST:PORT or auto; local: a Ray "
                        "started on this machine (default: $RAY_ADDRESS if set, else local)")
    for action in train.build_parser()._actions:
        if action.dest in ("help", "out", "resume"):
            continue
        if action.nargs == 0:  # --download
            p.add_argument(*action.option_strings, action="store_true", help=action.help)
        else:
            p.add_argument(*action.option_strings, nargs="+", type=action.type,
                           choices=action.choices, metavar=action.metavar or "V",
                           help=action.help)
    return p


def grid(args):
    """The trials: a list of {flag: value} dicts, each flag as train.py's argparse dest."""
    flags = set(vars(train.build_parser().parse_args([])))
    given = {k: v for k, v in vars(args).items() if k in flags and v not in (None, False)}
    zipped = [flag.lstrip("-").replace("-", "_") for flag in args.zip]
    for flag, key in zip(args.zip, zipped):
        if key not in flags:
            raise cli.UserError(f"--zip {flag}: train.py has no flag --{key.replace('_', '-')}")
        if not isinstance(given.get(key), list):
            raise cli.UserError(f"--zip {flag}: give --{key.replace('_', '-')} a list of values")
    lengths = {len(given[k]) for k in zipped}
    if len(lengths) > 1:
        raise cli.UserError(f"--zip {' '.join(args.zip)}: these flags need the same number of "
                            f"values, got {', '.join(f'{k} {len(given[k])}' for k in zipped)}")
    axes = [[dict(zip(zipped, values)) for values in zip(*(given[k] for k in zipped))]] if (
        zipped) else []
    for key, values in given.items():
        if key not in zipped:
            axes.append([{key: v} for v in values] if isinstance(values, list) else
                        [{key: values}])
    return [dict(kv for part in combo for kv in part.items()) for combo in itertools.product(*axes)]


def to_argv(config):
    """{flag: value} -> train.py's command-line arguments."""
    argv = []
    for key, value in config.items():
        argv += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return argv


def trial_name(config):
    """train.py's default run name, and every other flag that makes the trial what it is."""
    parser = train.build_parser()
    args, defaults = train.fill_defaults(parser.parse_args(to_argv(config))), parser.parse_args([])
    extra = [f"_{k}{v:g}" if isinstance(v, float) else f"_{k}{v}"
             for k, v in vars(args).items()
             if k not in NOT_IN_NAME and v != getattr(defaults, k) and
             k not in ("objective", "beta", "gamma", "c_max", "latent_dim", "circles", "seed")]
    return train.default_run_name(args) + "".join(extra)


def plan(args):
    """Check the whole grid before any work; returns [(name, train argv, state)] with state
    "done", "evaluate" (trained, not scored), "resume" or "new"."""
    trials, seen = [], set()
    for config in grid(args):
        name = trial_name(config)
        if name in seen:
            raise cli.UserError(f"two trials of the grid are both {name}")
        seen.add(name)
        folder = Path(args.folder) / name
        argv = to_argv(config)
        parser = train.build_parser()
        try:
            if (folder / "ckpt.pt").exists():  # train.py's own checks of a resumed run
                full = ["--resume", str(folder)] + argv
                targs, ckpt = train.resolve_args(parser.parse_args(full), parser, full)
            else:
                targs, ckpt = parser.parse_args(argv + ["--out", str(folder)]), None
            train.check_args(targs)
        except Exception as e:
            if not cli.user_mistake(e):
                raise
            raise cli.UserError(f"trial {name}: {e}") from None
        trials.append((name, argv, trial_state(targs, ckpt, folder, args.eval)))
    return trials


def trial_state(targs, ckpt, folder, evaluation):
    """What a trial still needs: all ("new"), training ("resume"), scoring, or nothing."""
    if ckpt is None:
        return "new"
    total = min(targs.epochs * (dataset.NUM_IMAGES // targs.batch_size),
                targs.max_steps or float("inf"))
    if ckpt["step"] < total:
        return "resume"
    if evaluation == "off":
        return "done"
    metrics = folder / ("metrics_quick.json" if evaluation == "quick" else "metrics.json")
    scored = metrics.exists() and cli.read_json(metrics).get("step") == ckpt["step"]
    return "done" if scored else "evaluate"


# ---------------------------------------------------------------- one trial (a Ray task)

def _tie_to_parent():
    """In the child, before exec: SIGTERM when the Ray worker that started it dies (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: a killed sweep's trials end on their own
        pass


def run_trial(repo, folder, name, train_argv, eval_argv, threads):
    """Train one trial with train.py and score it with evaluate.py, each a child process whose
    output goes to <trial>/train.log and evaluate.log. Returns (name, state, reason): state
    "done", "stopped" (FOLDER/sweep.stop appeared, or Ctrl-C: the trial saved a checkpoint)
    or "failed" (reason: the child's last line). The outcome is kept in <trial>/status.json."""
    trial, stop_file = Path(folder) / name, Path(folder) / STOP_FILE
    if stop_file.exists():  # stopped before it started
        return name, "stopped", ""
    trial.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    steps = [("train.log", ["train.py"] + train_argv)] if train_argv is not None else []
    if eval_argv is not None:
        steps.append(("evaluate.log", ["evaluate.py", str(trial)] + eval_argv))
    state, reason = "done", ""
    for log_name, cmd in steps:
        if stop_file.exists():
            state = "stopped"
            break
        with open(trial / log_name, "a") as log:
            code = _wait(subprocess.Popen([sys.executable, *cmd], cwd=repo, stdout=log,
                                          stderr=subprocess.STDOUT, env=env,
                                          preexec_fn=_tie_to_parent), stop_file)
        if code in (128 + signal.SIGTERM, 128 + signal.SIGINT, -signal.SIGTERM, -signal.SIGINT):
            state = "stopped"
            break
        if code != 0:
            lines = (trial / log_name).read_text().strip().splitlines()
            state, reason = "failed", lines[-1] if lines else f"{cmd[0]} exited with {code}"
            break
    (trial / "status.json").write_text(json.dumps({"status": state, "reason": reason}))
    return name, state, reason


def _wait(proc, stop_file):
    """The child's exit code; SIGTERM to it (a checkpoint, then exit) once stop_file appears or
    this worker is interrupted."""
    while True:
        try:
            return proc.wait(timeout=POLL)
        except subprocess.TimeoutExpired:
            if stop_file.exists():
                proc.send_signal(signal.SIGTERM)
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGTERM)


# ---------------------------------------------------------------- the driver

def progress(folder, trials, states):
    """One line per trial that is not waiting, and the count of each state."""
    lines = []
    for name, _, _ in trials:
        state = states[name]
        if state == "running":
            last = _last_progress(Path(folder) / name / "train.log")
            lines.append(f"  running  {name}: {last or 'starting'}")
        elif state in ("done", "failed", "stopped"):
            lines.append(f"  {state:8s} {name}")
    counts = {s: list(states.values()).count(s) for s in ("done", "running", "waiting", "failed")}
    return ", ".join(f"{n} {s}" for s, n in counts.items()) + "\n" + "\n".join(lines)


def _last_progress(log):
    """'step 1200/345600, 2,210 img/s, 4:20:11 left' from a train.log's last progress line."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 4096))
            tail = f.read().decode(errors="replace")
    except OSError:
        return None
    found = re.findall(r"step (\d+)/(\d+) .*?\| ([\d,]+) img/s \| \S+ elapsed, (\S+) left", tail)
    if not found:
        return None
    step, total, rate, left = found[-1]
    return f"step {step}/{total}, {rate} img/s, {left} left"


def start_ray(address, cpus):
    """Ray for the sweep: the test session's or caller's if running, else the cluster at
    address / $RAY_ADDRESS, else one started on this machine ("local" alike). A named cluster
    that does not answer is refused in one line first. Returns whether we started it."""
    source = "--address" if address else "$RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS")
    if address in (None, "", "local"):
        address = None
        # A Ray of this machine alone listens on loopback, not on the network (read at import),
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        # without a token: each local Ray writes its own to ~/.ray/auth_token, over the one that
        # the clients of a Ray started earlier on this machine still need.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    elif address != "auto":  # "auto": Ray finds this machine's `ray start` itself, or says not
        require_reachable(address, source)
    import ray

    if ray.is_initialized():
        return ray, False
    # "local": a Ray of its own, never one that `ray start` left on this machine.
    local = {} if address else {"num_cpus": cpus, "_node_ip_address": "127.0.0.1"}
    # Trials at the sweep's own priority, as plain train.py runs: Ray's workers would otherwise
    # run at niceness 15 and stall behind anything else on the machine.
    ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(HERE), "RAY_worker_niceness": "0"}},
             **local)
    return ray, True


def require_reachable(address, source):
    """A cluster's HOST:PORT or ray://HOST:PORT (IPv6 in brackets) must accept a connection:
    ray.init would otherwise retry an unreachable one for many minutes before it failed.
    source: where the address came from (--address or $RAY_ADDRESS), for the message."""
    parts = urllib.parse.urlsplit(address if "://" in address else "//" + address)
    try:
        port = parts.port  # None when absent; ValueError when not a port number
    except ValueError:
        port = None
    if parts.scheme not in ("", "ray") or not parts.hostname or not port or parts.path:
        raise cli.UserError(f"{source} must be HOST:PORT, ray://HOST:PORT, auto or local, got "
                            f"{address!r}")
    try:
        socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT).close()
    except OSError as e:
        why = "unknown host" if isinstance(e, socket.gaierror) else e.strerror or e
        raise cli.UserError(f"no Ray cluster answers at {address} ({source}; {why}): start one "
                            f"there with `ray start --head`, or leave out --address and "
                            f"$RAY_ADDRESS") from None


def require_room(nodes, cpus, gpus):
    """A trial needs one Ray node with `cpus` CPUs and `gpus` GPUs; without one, Ray would keep
    it waiting for ever (an infeasible task), so the sweep stops with one line instead."""
    free = [(n["Resources"].get("CPU", 0), n["Resources"].get("GPU", 0)) for n in nodes
            if n["Alive"]]
    if not any(c >= cpus and g >= gpus for c, g in free):
        have = ", ".join(f"{c:g} CPUs and {g:g} GPUs" for c, g in free) or "none alive"
        raise cli.UserError(f"no Ray node has --cpus-per-trial {cpus:g} CPUs and "
                            f"--gpus-per-trial {gpus:g} GPUs (nodes: {have}): lower them, "
                            "or start a node that has them")


def run(args, trials):
    """Submit the trials that are not done; report progress; stop them all on a signal."""
    folder = Path(args.folder)
    states = {name: ("done" if state == "done" else "waiting") for name, _, state in trials}
    todo = [(name, argv, state) for name, argv, state in trials if state != "done"]
    if not todo:
        return 0
    (folder / STOP_FILE).unlink(missing_ok=True)  # left by a sweep that was killed
    ray, started = start_ray(args.address, os.cpu_count())
    # After ray.init, which puts a handler of its own on SIGTERM (one that exits at once).
    stop, last_report, failed = runlog.StopFlag(), 0.0, 0
    try:
        require_room(ray.nodes(), args.cpus_per_trial, args.gpus_per_trial)
        task = ray.remote(run_trial).options(num_cpus=args.cpus_per_trial,
                                             num_gpus=args.gpus_per_trial, max_retries=0)
        refs = {task.remote(str(HERE), str(folder), name, None if state == "evaluate" else (
            ["--out" if state == "new" else "--resume", str(folder / name)] + argv),
            eval_argv(args), args.cpus_per_trial): name for name, argv, state in todo}
        pending = list(refs)
        while pending:
            if stop.signum:  # every trial checkpoints and returns; queued ones do not start
                (folder / STOP_FILE).touch()
            ready, pending = ray.wait(pending, num_returns=1, timeout=POLL)
            for ref in ready:
                try:
                    name, state, reason = ray.get(ref)
                except ray.exceptions.RayError as e:  # the worker died, or Ray failed it
                    name, state, reason = refs[ref], "failed", type(e).__name__
                states[name] = state
                failed += state == "failed"
                print(f"{name}: {state}" + (f": {reason}" if reason else ""), flush=True)
                write_summary(folder, data_path(args))
            _mark_running(folder, states)
            if ready or time.monotonic() - last_report > STATUS_EVERY:
                print(progress(folder, trials, states), flush=True)
                last_report = time.monotonic()
    finally:
        stop.restore()
        (folder / STOP_FILE).unlink(missing_ok=True)
        if started:
            ray.shutdown()
    if stop.signum:
        print(f"{signal.Signals(stop.signum).name}: trials stopped with their checkpoints; "
              f"continue with the same command")
        return 128 + stop.signum
    return 1 if failed else 0


def data_path(args):
    """The sweep's --data (one file: it is not part of a trial's name, so it takes one value)."""
    return args.data[0] if args.data else None


def eval_argv(args):
    """evaluate.py's arguments after the trial folder: --eval's, on the file the trials trained
    on; None: --eval off."""
    if EVAL[args.eval] is None:
        return None
    return EVAL[args.eval] + (["--data", data_path(args)] if args.data else [])


def write_summary(folder, data):
    """summary.write, where a trial's unreadable file costs the summary, not the sweep."""
    try:
        summary.write(folder, data)
    except Exception as e:
        if not cli.user_mistake(e):
            raise
        print(f"summary not written: {e}", flush=True)


def _mark_running(folder, states):
    """A waiting trial whose folder holds a train.lock (train.py took it) is running."""
    for name, state in states.items():
        if state == "waiting" and (folder / name / "train.lock").exists():
            states[name] = "running"


def main(argv=None):
    args = build_parser().parse_args(argv)
    cli.require("cpus-per-trial", args.cpus_per_trial, 1)
    cli.require("gpus-per-trial", args.gpus_per_trial, 0)
    cli.require_folder("sweep folder", args.folder)
    trials = plan(args)
    folder = Path(args.folder)
    lock = runlog.RunLock(folder, "sweep.lock", "a sweep", "choose another folder")
    try:
        done = sum(state == "done" for _, _, state in trials)
        print(f"sweep {folder}: {len(trials)} trials, {done} done, "
              f"{len(trials) - done} to train or score")
        status = run(args, trials)
        write_summary(folder, data_path(args))
        print(f"wrote {folder / 'summary.csv'}, summary.md, summary.png and rotation.png")
        return status
    finally:
        lock.release()


if __name__ == "__main__":
    cli.run_script(main)
