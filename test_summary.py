"""summary.py: each trial's row from its files, the per-setting table, UDR and the figure."""
import csv
import json
import shutil
import statistics

import pytest
import torch

import checkpoint
import dataset
import summary
import traverse
from model import BetaVAE
from cli import UserError
from dataset import FACTOR_NAMES


def test_tail_losses_average_the_last_500_steps(tmp_path):
    path = tmp_path / "losses.csv"
    lines = ["step,epoch,loss,recon,kl,c,kl_z0,kl_z1"]
    lines += [f"{s},0,0,{s / 100},{s / 1000},0,{0.1 * s / 100},0.2" for s in range(100, 1100, 100)]
    path.write_text("\n".join(lines) + "\n")
    # Steps 600..1000 are the last 500: recon 6..10, KL 0.6..1.0, z0's KL 0.6..1.0 (on), z1 off.
    assert summary.tail_losses(path, 1000) == {"recon": 8.0, "kl": 0.8, "latents_on": 1}
    assert summary.tail_losses(path, 500)["recon"] == 3.0  # a checkpoint at 500: rows 100..500


def test_mean_std_is_the_population_std_and_prints_counts_as_counts():
    assert summary.mean_std([0.5, 0.7, None, ""]) == "0.600 ± 0.100"
    assert summary.mean_std([0.25]) == "0.250"
    assert summary.mean_std([4, 4]) == "4 ± 0"  # latents on: a count, not "4.000 ± 0.000"
    assert summary.mean_std([3, 4]) == "3.5 ± 0.5"
    assert summary.mean_std([]) == ""


def fake_trial(folder, run40, name, mig, seeds=(0, 1, 2)):
    """run40's checkpoint and log under `name`, with a made-up full-protocol metrics.json."""
    trial = folder / name
    trial.mkdir(parents=True)
    shutil.copy(run40 / "losses.csv", trial / "losses.csv")
    ckpt = checkpoint.load(run40)
    ckpt["args"]["seed"] = int(name.split("seed")[1])
    checkpoint.save(trial / "ckpt.pt", ckpt)
    mi = [[0.0] * 5 for _ in range(10)]
    mi[3][2], mi[7][3] = 0.31, 0.62  # z3 ~ orientation, z7 ~ posX
    mi[3][0], mi[5][0] = 0.05, 0.4  # z3 changes the shape a little, z5 codes it
    # z9 is off (KL 0.01), yet its means, binned over their own tiny range, track posX: skipped.
    kl = [1.0] * 9 + [0.01]
    mi[9][3] = 0.7
    by_seed = [{"seed": s, "beta_vae": 0.9, "factor_vae": 0.7, "mig": mig + 0.01 * s,
                "mig_no_shape": 0.4, "dci_disentanglement": 0.5, "dci_completeness": 0.4,
                "dci_informativeness": 0.8, "sap": 0.1} for s in seeds]
    mean_std = {k: [statistics.fmean(r[k] for r in by_seed), statistics.pstdev(r[k] for r in by_seed)]
                for k in by_seed[0] if k != "seed"}
    (trial / "metrics.json").write_text(json.dumps(
        {"step": 40, "quick": False, "mi": mi, "kl_per_dim": kl, "by_seed": by_seed,
         "mean_std": mean_std}))
    (trial / "status.json").write_text(json.dumps({"status": "done", "reason": ""}))
    return trial


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_each_row_is_its_trials_files_and_settings_average_their_seeds(tmp_path, run40):
    folder = tmp_path / "sweep"
    for seed, mig in ((0, 0.3), (1, 0.5)):
        fake_trial(folder, run40, f"beta4_H_z10_seed{seed}", mig)
    fake_trial(folder, run40, "beta6_TC_z10_seed0", 0.2)
    training = fake_trial(folder, run40, "beta4_H_z10_seed2", 0.9)  # still training: no scores
    (training / "metrics.json").unlink()
    lines = (training / "losses.csv").read_text().splitlines()  # and a worse reconstruction
    recon = lines[0].split(",").index("recon")
    (training / "losses.csv").write_text("\n".join([lines[0]] + [",".join(
        str(10 * float(v)) if i == recon else v for i, v in enumerate(line.split(",")))
        for line in lines[1:]]) + "\n")
    (training / "status.json").write_text(json.dumps({"status": "stopped", "reason": ""}))
    (folder / "not_a_trial").mkdir()
    summary.write(folder)
    rows = read(folder / "summary.csv")
    assert [r["trial"] for r in rows] == ["beta4_H_z10_seed0", "beta4_H_z10_seed1",
                                          "beta4_H_z10_seed2", "beta6_TC_z10_seed0"]
    first = rows[0]
    assert (first["setting"], first["step"], first["objective"], first["status"]) == (
        "beta4_H_z10", "40", "H", "done")
    assert float(first["mig"]) == pytest.approx(0.31)  # mean over evaluation seeds 0, 1, 2
    assert (first["mi_orientation"], first["z_orientation"]) == ("0.31", "3")
    assert (first["mi_posX"], first["z_posX"]) == ("0.62", "7")
    assert (first["mi_shape"], first["z_shape"], first["mi_shape_of_z_orientation"]) == (
        "0.4", "5", "0.05")
    assert set(f"mi_{f}" for f in FACTOR_NAMES) <= set(first)
    # UDR where a setting has two scored seeds (the same weights twice here), not for TC's one.
    assert rows[0]["udr"] == rows[1]["udr"] != "" and rows[2]["udr"] == rows[3]["udr"] == ""
    table = (folder / "summary.md").read_text()
    # Seed 2 (unscored) is listed apart and kept out of every mean, its losses included.
    assert "| beta4_H_z10 | 0, 1 | 0.900 ± 0.000 | 0.700 ± 0.000 | 0.410 ± 0.100 |" in table
    assert float(rows[2]["recon"]) == pytest.approx(10 * float(rows[0]["recon"]), rel=1e-3)
    h = next(line for line in table.splitlines() if line.startswith("| beta4_H_z10 |"))
    assert h.endswith(" | 2: 40 |") and f"| {float(rows[0]['recon']):.3f} ± 0.000 |" in h
    assert "| beta6_TC_z10 | 0 | 0.900 | 0.700 | 0.210 |" in table
    assert (folder / "summary.png").stat().st_size > 10_000
    assert (folder / "rotation.png").stat().st_size > 10_000


def test_udr_and_the_strips_encode_images_of_the_given_data_file(tmp_path, run40):
    fake_trial(tmp_path / "sweep", run40, "beta4_H_z10_seed0", 0.3)
    with pytest.raises(dataset.DataError, match="no dSprites file at .*absent.npz"):
        summary.write(tmp_path / "sweep", tmp_path / "absent.npz")


def test_rotation_strips_sweep_each_scored_trials_orientation_latent(tmp_path, run40):
    folder = tmp_path / "sweep"
    fake_trial(folder, run40, "beta4_H_z10_seed0", 0.3)
    fake_trial(folder, run40, "beta4_H_z10_seed1", 0.3)
    (folder / "beta4_H_z10_seed1" / "metrics.json").unlink()  # not scored: no strip
    rows = [summary.trial_row(run) for run in sorted(folder.iterdir())]
    data = dataset.load()
    strips = summary.rotation_strips(folder, rows, data)
    assert list(strips) == ["beta4_H_z10_seed0"]
    label, images, ticks = strips["beta4_H_z10_seed0"]
    assert label.endswith("z3, normalised MI with orientation 0.31, with shape 0.05")
    assert ticks == ["-3", "-2.25", "-1.5", "-0.75", "0", "0.75", "1.5", "2.25", "3"]
    # Reference: decode each sample's posterior mean with z3 set to -3, -2.25, ..., 3 directly.
    model = checkpoint.rebuild_model(checkpoint.load(run40))
    xs = dataset.as_input(data.images(dataset.factors_to_index(torch.tensor(traverse.SAMPLES))))
    with torch.no_grad():
        mu, _ = model.encode(xs)
        z = mu.repeat_interleave(9, dim=0)
        z[:, 3] = torch.arange(-3, 3.01, 0.75).repeat(len(xs))
        expected = torch.sigmoid(model.decode(z)).reshape(len(xs), 9, 64, 64)
    assert images.shape == (4, 9, 64, 64)
    assert torch.allclose(torch.from_numpy(images), expected, atol=1e-5)


def test_udr_agreement_is_spearmans_rank_correlation():
    rows = [{"udr": u, **{k: 0.5 for k in summary.SCORES}, "mig": m, "sap": s}
            for u, m, s in ((0.1, 0.1, 0.4), (0.5, 0.2, 0.3), (0.9, 0.4, 0.1), (0.7, 0.3, 0.2))]
    line = summary.udr_agreement(rows)
    assert "over 4 trials" in line  # ranks 1 2 4 3 against 1 2 4 3 and 4 3 1 2
    assert "MIG (Chen 2018) 1.00" in line and "SAP (Kumar 2018) -1.00" in line
    assert "β-VAE" not in line  # constant: no rank correlation
    assert summary.udr_agreement(rows[:2]) == ""  # too few to rank
    assert summary.udr_agreement([dict(r, udr=0.0) for r in rows]) == ""  # UDR has no ranks


def test_usage_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="no sweep folder at .*missing"):
        summary.main([str(tmp_path / "missing")])
    with pytest.raises(UserError, match="the following arguments are required: folder"):
        summary.main([])


def test_a_circle_trials_row_and_strip_are_its_circles(tmp_path, run40):
    """A trial with --circles: its row has the circle's KL, MIs and orientation MI within
    shape, and its strip turns the circle through a full turn in 30° steps from -180°."""
    trial = fake_trial(tmp_path / "sweep", run40, "beta4_H_z10_circles1_seed0", 0.3)
    torch.manual_seed(0)
    model = BetaVAE(circles=1)
    ckpt = checkpoint.load(trial)
    ckpt.update(model_args=model.config, model=model.state_dict())
    ckpt["args"]["circles"] = 1
    checkpoint.save(trial / "ckpt.pt", ckpt)
    metrics = json.loads((trial / "metrics.json").read_text())
    metrics["orientation_mi_within_shape"] = [0.42] + [0.05] * 9
    (trial / "metrics.json").write_text(json.dumps(metrics))
    row = summary.trial_row(trial)
    assert (row["circles"], row["circle0_kl"], row["circle0_mi_orientation"],
            row["circle0_mi_shape"], row["circle0_mi_orientation_within_shape"]) == (
        1, 1.0, 0.0, 0.0, 0.42)
    assert (row["mi_orientation_within_shape"], row["z_orientation_within_shape"]) == (0.42, 0)
    data = dataset.load()
    label, images, ticks = summary.rotation_strips(tmp_path / "sweep", [row], data)[trial.name]
    assert "circle z0" in label and "orientation within shape 0.42" in label
    assert ticks == [f"{d}°" for d in range(-180, 180, 30)] and images.shape == (4, 12, 64, 64)
    xs = dataset.as_input(data.images(dataset.factors_to_index(torch.tensor(traverse.SAMPLES))))
    with torch.no_grad():
        mu, _ = model.eval().encode(xs[:1])
        mu[0, 0] = torch.pi / 2  # the 90° column
        expected = torch.sigmoid(model.decode(mu))[0, 0]
    assert torch.allclose(torch.from_numpy(images[0, 9]), expected, atol=1e-5)
