"""The shipped reference run (results/beta4_H_z10_seed0) against what the README says of it:
its flags, its scores file, its normalised MI recomputed, and the README's GIFs redrawn from it;
and the README's study table against the study's summary.csv."""
import csv
import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np

import checkpoint
import dataset
import evaluate
import train
import traverse

ROOT = Path(__file__).parent
RUN = ROOT / "results" / "beta4_H_z10_seed0"
GIF = ROOT / "gif"


def test_shipped_checkpoint_is_the_reference_run():
    """30 epochs at the paper's batch 64 (345,600 steps), β 4, objective H, seed 0, the chosen
    recipe (PyTorch init, no warm-up); its metrics.json is the full protocol over seeds 0-2."""
    ckpt = checkpoint.load(RUN)
    args = ckpt["args"]
    assert ckpt["step"] == 345_600 == 30 * dataset.NUM_IMAGES // args["batch_size"]
    assert (args["batch_size"], args["beta"], args["objective"], args["seed"], args["init"],
            args["warmup_steps"], args["lr"], args["latent_dim"]) == (
        64, 4.0, "H", 0, "pytorch", 0, 5e-4, 10)
    metrics = json.loads((RUN / "metrics.json").read_text())
    assert metrics["step"] == 345_600 and not metrics["quick"]
    assert [r["seed"] for r in metrics["by_seed"]] == [0, 1, 2]


def test_shipped_model_separates_position_and_scale():
    """Normalised MI recomputed from the weights (on another draw of 10,000 images) matches
    metrics.json, and posX, posY and scale each have a latent above 0.5 (the README's claim)."""
    ckpt = checkpoint.load(RUN)
    model = checkpoint.rebuild_model(ckpt)
    mi, kl = evaluate.latent_factor_mi(model, dataset.load(None))
    stored = json.loads((RUN / "metrics.json").read_text())
    np.testing.assert_allclose(mi, stored["mi"], atol=0.03)
    np.testing.assert_allclose(kl, stored["kl_per_dim"], rtol=0.02, atol=0.01)
    best = np.max(mi, axis=0)
    for factor in ("scale", "posX", "posY"):
        assert best[dataset.FACTOR_NAMES.index(factor)] >= 0.5, factor


def test_readme_gifs_come_from_the_shipped_checkpoint(tmp_path):
    """traverse.py on the shipped checkpoint redraws gif/'s 40 GIFs (to a grey level or two,
    for other CPUs' rounding) and the README's table with the same latent labels."""
    traverse.main([str(RUN / "ckpt.pt"), "--out", str(tmp_path)])
    shipped = sorted(GIF.glob("*/traversal_latent_dim_*.gif"))
    assert len(shipped) == 40
    for path in shipped:
        old = iio.imread(path).astype(int)
        new = iio.imread(tmp_path / path.relative_to(GIF)).astype(int)
        assert old.shape == new.shape, path
        assert np.abs(old - new).max() <= 2, path
    table = (tmp_path / "traversals.md").read_text().replace(tmp_path.as_posix(), "gif")
    assert table == (GIF / "traversals.md").read_text()
    assert table.splitlines()[0] in (ROOT / "README.md").read_text()


def test_shipped_recipe_runs_resume_under_the_current_code(tmp_path):
    """A shipped run folder (checkpoint and log) resumes for one more step and keeps its flags."""
    run = tmp_path / "pytorch_init"
    run.mkdir()
    for name in ("ckpt.pt", "losses.csv"):
        (run / name).write_bytes((ROOT / "results" / "recipe" / "pytorch_init" / name).read_bytes())
    before = checkpoint.load(run)
    assert train.main(["--resume", str(run), "--epochs", "3",  # it was trained for 2
                       "--max-steps", str(before["step"] + 1)]) == 0
    after = checkpoint.load(run)
    assert after["step"] == before["step"] + 1
    given = ("epochs", "max_steps", "resume", "out")  # out: where the folder is now
    assert {k: v for k, v in after["args"].items() if k not in given and k in before["args"]} == {
        k: v for k, v in before["args"].items() if k not in given}
    defaults = vars(train.build_parser().parse_args([]))  # flags newer than the run: defaults
    assert {k: v for k, v in after["args"].items() if k not in before["args"]} == {
        k: defaults[k] for k in after["args"] if k not in before["args"]} == {"circles": 0}


def readme_table(heading):
    """The rows of the table under README heading `heading`, each a list of its cells."""
    text = (ROOT / "README.md").read_text()
    section = text.split(f"## {heading}\n")[1].split("\n## ")[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| trial")]


def summary_rows(study):
    """results/<study>/summary.csv's rows by trial name."""
    with open(ROOT / "results" / study / "summary.csv") as f:
        return {row["trial"]: row for row in csv.DictReader(f)}


def test_readme_study_table_is_the_study_summary():
    """Each trial row of the README's study table is results/study/summary.csv's, rounded (β-VAE,
    FactorVAE, MIG; the best normalised MI of posX, posY and scale; the rotation latent's MI with
    orientation and shape), and the row after a setting's trials (two seeds or more) is their
    mean ± population std; every trial at step 345,600 has its row, and only those."""
    trials = summary_rows("study")
    group, means, shown = [], 0, set()
    for cells in readme_table("Across objectives and seeds"):
        if not cells[0].startswith("["):  # a setting's mean ± std
            assert len(group) >= 2 and cells[0].endswith(f"{len(group)} seeds"), cells[0]
            for cell, key in zip(cells[1:4], ("beta_vae", "factor_vae", "mig")):
                values = [float(row[key]) for row in group]
                assert cell == f"{np.mean(values):.3f} ± {np.std(values):.3f}", (cells[0], key)
            group, means = [], means + 1
            continue
        row = trials[Path(cells[0].split("](")[1].rstrip(")")).parent.name]
        assert row["step"] == "345600" and row["protocol"] == "full", row["trial"]
        shown.add(row["trial"])

        def rounded(key, digits):
            return f"{float(row[key]):.{digits}f}"

        assert cells[1:] == [
            rounded("beta_vae", 3), rounded("factor_vae", 3), rounded("mig", 3),
            " / ".join(rounded(f"mi_{v}", 2) for v in ("posX", "posY", "scale")),
            f"z{row['z_orientation']}: {rounded('mi_orientation', 2)} / "
            f"{rounded('mi_shape_of_z_orientation', 2)}"], cells[0]
        if group and group[-1]["setting"] != row["setting"]:
            assert len(group) == 1, f"{group[-1]['setting']}: its seeds' mean row is missing"
            group = []
        group.append(row)
    assert means >= 2 and len(group) <= 1, "a setting's mean row is missing"
    done = {t for t, row in trials.items() if row["step"] == "345600"}
    assert shown == done, f"trials at step 345,600 without a README row: {sorted(done - shown)}"


def test_readme_circle_table_is_the_summaries():
    """Each row of the README's circle table is its trial's summary.csv row, rounded: a circle
    trial's (results/circle: its circle's KL, orientation MI, shape MI and orientation MI within
    shape) or an H trial's (results/study: its rotation latent; the MI within shape, which its
    metrics.json predates, is `evaluate.py --quick`'s, so only its form is checked); every
    circle trial at step 345,600 has its row."""
    circle, study = summary_rows("circle"), summary_rows("study")
    shown = set()
    for cells in readme_table("Rotation is a circle"):
        if cells[0].startswith("H seed "):
            row = study[f"beta4_H_z10_seed{cells[0].split()[-1]}"]
            head = f"z{row['z_orientation']}: {float(row['mi_orientation']):.2f} / " \
                   f"{float(row['mi_shape_of_z_orientation']):.2f} / "
            assert cells[1].startswith(head) and len(cells[1]) == len(head) + 4, cells
        else:
            row = circle[Path(cells[0].split("](")[1].rstrip(")")).parent.name]
            assert row["step"] == "345600" and row["protocol"] == "full", row["trial"]
            assert cells[1] == "z0 circle, KL {:.2f}: {:.2f} / {:.2f} / {:.2f}".format(
                *(float(row[f"circle0_{k}"]) for k in
                  ("kl", "mi_orientation", "mi_shape", "mi_orientation_within_shape")))
            shown.add(row["trial"])
        assert cells[2:] == [
            " / ".join(f"{float(row[f'mi_{v}']):.2f}" for v in ("posX", "posY", "scale")),
            f"{float(row['mig']):.3f}", f"{float(row['factor_vae']):.3f}",
            f"{float(row['recon']):.1f}"], cells[0]
    assert shown == {t for t, row in circle.items() if row["step"] == "345600"}
