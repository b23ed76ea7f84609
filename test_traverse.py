"""traverse.py: GIFs, grid, reconstructions and latent names; its user errors."""
import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch

import traverse
from checkpoint import CheckpointError
from cli import UserError
from conftest import run_script, save_model
from model import BetaVAE


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
    (run / "metrics.json").write_text('{"step": 40, "mi": [[0.0')  # a write cut short
    with pytest.raises(UserError, match="metrics.json is damaged"):
        traverse.main([str(run / "ckpt.pt"), "--out", str(tmp_path / "gif"), "--frames", "3"])


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


def test_damaged_or_foreign_checkpoints_are_refused(run40, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes((run40 / "ckpt.pt").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        traverse.main([str(bad)])
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint of train.py"):
        traverse.main([str(tmp_path / "foreign.pt")])


@pytest.mark.parametrize("args, message", [
    (["traverse.py", "CKPT", "--frames", "1"], "--frames must be a finite number at least 2"),
    (["traverse.py", "CKPT", "--limit", "-3"], "--limit must be a finite number above 0"),
    (["traverse.py", "CKPT", "--samples", "3,737280"], "--samples must be comma-separated"),
    (["traverse.py", "CKPT", "--samples", "a,b"], "--samples must be comma-separated"),
])
def test_bad_numbers_end_in_one_line(run40, args, message):
    r = run_script(*[str(run40) if a == "CKPT" else a for a in args])
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    assert r.stdout == ""



def test_a_circle_turns_once_round_and_its_gif_loops_without_a_jump(tmp_path, capsys):
    """A circle's column: 2 (frames − 1) angles evenly round the turn from −π, forward only, so
    the step from the last frame back to the first is one more step; its header says circle."""
    torch.manual_seed(0)
    model = BetaVAE(circles=1)
    run = save_model(tmp_path / "run", model, step=7)
    mi = [[0.0, 0.0, 0.9, 0.0, 0.0]] + [[0.0] * 5] * 9
    (run / "metrics.json").write_text(json.dumps({"step": 7, "mi": mi, "kl_per_dim": [2.0] * 10}))
    values = traverse.sweep_values(model, 0, 3.0, 8)
    torch.testing.assert_close(values, torch.arange(8) * (2 * torch.pi / 8) - torch.pi)
    torch.testing.assert_close(traverse.sweep_values(model, 1, 3.0, 5), torch.linspace(-3, 3, 5))
    traverse.main([str(run), "--out", str(tmp_path / "gif"), "--frames", "5"])
    circle = iio.imread(tmp_path / "gif" / "1" / "traversal_latent_dim_0.gif", index=None)
    line = iio.imread(tmp_path / "gif" / "1" / "traversal_latent_dim_1.gif", index=None)
    assert len(circle) == len(line) == 8  # 8 angles; 5 values there and 3 back
    bar = circle[:, -traverse.BAR // 2, :, 0] > 128  # the bar's marker moves on every frame
    starts = [int(np.argmax(row)) for row in bar]
    assert starts == sorted(starts) and len(set(starts)) == 8
    header = (tmp_path / "gif" / "traversals.md").read_text().splitlines()[0]
    assert header.startswith("| sample | z0: circle, orientation (KL 2.00) | z1: shape (KL 2.00)")
