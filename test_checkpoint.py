"""checkpoint.py: train.py's checkpoints load back; anything else is a one-line CheckpointError."""
import argparse
import re

import pytest
import torch

import checkpoint
from checkpoint import CheckpointError
from model import BetaVAE


def saved(tmp_path, **changes):
    """A checkpoint as train.py writes it at step 0, with `changes` applied, saved to tmp_path."""
    model = BetaVAE()
    opt = torch.optim.Adam(model.parameters())
    ckpt = checkpoint.state(model, opt, 0, argparse.Namespace(beta=4.0), torch.device("cpu"))
    ckpt.update(changes)
    checkpoint.save(tmp_path / "ckpt.pt", ckpt)
    return tmp_path


def test_a_checkpoint_rebuilds_its_model(tmp_path, capsys):
    ckpt = checkpoint.load(saved(tmp_path))
    model = checkpoint.rebuild_model(ckpt)
    x = torch.rand(2, 1, 64, 64)
    reference = BetaVAE()
    reference.load_state_dict(ckpt["model"])
    assert torch.equal(model.encode(x)[0], reference.eval().encode(x)[0])
    checkpoint.main([str(tmp_path)])
    assert capsys.readouterr().out.splitlines() == ["step 0; model {'latent_dim': 10, 'channels': "
                                                    "1}; 502,005 parameters", "flags: --beta 4.0"]


@pytest.mark.parametrize("changes, message", [
    ({"args": None}, "args of the wrong type"),
    ({"model_args": "x", "step": 1.5}, "model_args, step of the wrong type"),
    ({"model": [1, 2]}, "model of the wrong type"),
    ({"model": {"encoder.0.weight": 1}}, "model of the wrong type"),
])
def test_entries_of_the_wrong_type_are_refused_on_load(tmp_path, changes, message):
    with pytest.raises(CheckpointError, match=f"is not a checkpoint of train.py: {message}"):
        checkpoint.load(saved(tmp_path, **changes))


@pytest.mark.parametrize("model_args", [{"latent_dim": 10, "bogus": 1}, {"latent_dim": -1}])
def test_model_args_that_are_not_betavaes_are_refused(tmp_path, model_args):
    ckpt = checkpoint.load(saved(tmp_path, model_args=model_args))
    with pytest.raises(CheckpointError, match=f"model_args {re.escape(str(model_args))} are not "
                                              "BetaVAE's arguments"):
        checkpoint.rebuild_model(ckpt)
