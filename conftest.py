"""Shared by the test files: a short training run on rendered data, and scripts run as a user
runs them."""
import csv
import subprocess
import sys
from pathlib import Path

import pytest

import train

HERE = Path(__file__).resolve().parent
FAST = ["--batch-size", "16", "--log-every", "5", "--ckpt-every", "10", "--lr", "2e-3"]
HANG = 1800  # seconds: a guard against a hung subprocess, never a check of speed
# evaluate.py's sample counts shrunk to a few hundred images (tiny_protocol, test_smoke.py).
TINY = dict(n_beta_train=40, n_beta_eval=20, n_fvae_train=40, n_fvae_eval=20, n_variance=400,
            n_mig=400, n_dci_train=200, n_dci_test=100, n_sap_train=200, n_sap_test=100, batch=16)


def rows(run):
    with open(run / "losses.csv", newline="") as f:
        return list(csv.DictReader(f))


def run_script(*args, **kw):
    return subprocess.run([sys.executable, *args], cwd=HERE, capture_output=True, text=True,
                          timeout=HANG, **kw)


def save_model(folder, model, step=0):
    """folder/ckpt.pt holding `model` as a checkpoint that evaluate.py and traverse.py read (no
    optimizer state, no flags: it cannot be resumed); returns the folder."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model_args": model.config, "model": model.state_dict(), "optimizer": {},
                "step": step, "args": {}}, folder / "ckpt.pt")
    return folder


@pytest.fixture
def tiny_protocol(monkeypatch):
    """evaluate.py's protocols shrunk to a few hundred images, its quick one too: every step runs,
    in seconds. Returns the counts."""
    import evaluate

    for key, value in TINY.items():
        monkeypatch.setitem(evaluate.PROTOCOL, key, value)
        if key in evaluate.QUICK:
            monkeypatch.setitem(evaluate.QUICK, key, value)
    return dict(TINY)


@pytest.fixture(scope="session")
def run40(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "straight"
    assert train.main(["--epochs", "1", "--max-steps", "40", "--out", str(out)] + FAST) == 0
    return out
