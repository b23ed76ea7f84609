"""The summary of a sweep folder: one row per trial, mean ± std per setting, and the picture.

    python summary.py results/study   # rewrites summary.csv, summary.md, summary.png, rotation.png

Reads every run folder in the sweep folder (ckpt.pt, losses.csv, metrics.json, status.json) and
writes summary.csv (one row per trial: its flags, step, reconstruction and KL per image over the
last 500 steps, latents with KL >= 0.5 nats, the scores, for each factor the best normalised
MI with an active latent and that latent, the best orientation MI within shape, each circle
latent's KL and MIs, and UDR where its setting has two or more scored seeds), summary.md (per
setting, the trials that differ only in seed: mean ± std over the scored ones, the others listed
with their step; and how UDR's ranking of the trials agrees with each score's), summary.png
(each score per setting, one point per seed and the mean) and rotation.png (each scored trial's
rotation latent, the one with the most orientation MI, swept from -3 to 3 on traverse.py's four
samples; in a trial with circle latents its first circle, through a full turn). sweep.py
rewrites them whenever a trial ends.
"""
import csv
import re
import statistics
from pathlib import Path

import numpy as np
import torch

import checkpoint
import cli
import dataset
import evaluate
import runlog
import traverse
from dataset import FACTOR_NAMES
from evaluate import SCORES

TAIL_STEPS = 500  # losses averaged over the last 500 steps
ACTIVE_KL = 0.5  # nats: a latent at or above this counts as on
STRIP = (-3.0, 3.0, 9)  # rotation.png: z values from, to, how many
CIRCLE_STRIP = 12  # rotation.png: a circle's angles round the turn, 30° apart
# Flags of the run that say what it is (summary columns), in this order.
FLAGS = ("objective", "beta", "gamma", "c_max", "c_steps", "latent_dim", "circles", "batch_size",
         "lr", "init", "warmup_steps", "epochs", "seed")


def setting(name):
    """A trial's setting: its name without the seed (trials of one setting differ in seed)."""
    return re.sub(r"_seed\d+", "", name)


def tail_losses(losses_csv, step):
    """Mean reconstruction and KL over the logged rows of the last TAIL_STEPS steps, and the
    number of latents whose mean KL there is at least ACTIVE_KL."""
    cols = runlog.read_columns(losses_csv) if losses_csv.exists() else {}
    keep = [i for i, s in enumerate(cols.get("step", [])) if step - TAIL_STEPS < s <= step]
    if not keep:
        return {}
    mean = lambda k: statistics.fmean(cols[k][i] for i in keep)  # noqa: E731
    on = sum(mean(k) >= ACTIVE_KL for k in cols if k.startswith("kl_z"))
    return {"recon": round(mean("recon"), 3), "kl": round(mean("kl"), 3), "latents_on": on}


def scores(metrics):
    """Each score of a metrics file: the mean over its evaluation seeds where it has several."""
    if "mean_std" in metrics:
        return {k: metrics["mean_std"][k][0] for k in SCORES if k in metrics["mean_std"]}
    return {k: get(metrics) for k, (_, get) in SCORES.items()}


def best_mi(metrics):
    """For each factor, the largest normalised MI with an active latent, and that latent; and
    the shape MI of the orientation latent (a rotation latent that also changes the shape has
    both). Inactive latents (KL below traverse.INACTIVE_KL) are skipped: MI's 20 bins span a
    collapsed latent's tiny range of means, which can still track a factor the decoder ignores."""
    mi, kl = metrics["mi"], metrics["kl_per_dim"]
    active = [j for j in range(len(mi)) if kl[j] >= traverse.INACTIVE_KL] or range(len(mi))
    row = {}
    for k, factor in enumerate(FACTOR_NAMES):
        j = max(active, key=lambda i: mi[i][k])
        row[f"mi_{factor}"], row[f"z_{factor}"] = round(mi[j][k], 4), j
    row["mi_shape_of_z_orientation"] = round(mi[row["z_orientation"]][FACTOR_NAMES.index("shape")], 4)
    within = metrics.get("orientation_mi_within_shape")  # absent in older metrics files
    if within:
        j = max(active, key=lambda i: within[i])
        row["mi_orientation_within_shape"] = round(within[j], 4)
        row["z_orientation_within_shape"] = j
    return row


def circle_columns(metrics, circles):
    """Each circle latent's KL, orientation and shape MI, and orientation MI within shape."""
    row = {}
    for j in range(circles):
        row[f"circle{j}_kl"] = round(metrics["kl_per_dim"][j], 4)
        for factor in ("orientation", "shape"):
            row[f"circle{j}_mi_{factor}"] = round(metrics["mi"][j][FACTOR_NAMES.index(factor)], 4)
        row[f"circle{j}_mi_orientation_within_shape"] = round(
            metrics["orientation_mi_within_shape"][j], 4)
    return row


def trial_row(run):
    """One trial's summary.csv row, from its files alone."""
    ckpt = checkpoint.load(run)
    row = {"trial": run.name, "setting": setting(run.name), "step": ckpt["step"]}
    row.update({k: ckpt["args"].get(k) for k in FLAGS})
    status = run / "status.json"
    row.update(cli.read_json(status) if status.exists() else {"status": "", "reason": ""})
    row.update(tail_losses(run / "losses.csv", ckpt["step"]))
    for name in ("metrics.json", "metrics_quick.json"):  # the full protocol's, if there is one
        if (run / name).exists():
            metrics = cli.read_json(run / name)
            if metrics.get("step") == ckpt["step"]:
                row.update(protocol="quick" if metrics["quick"] else "full", **scores(metrics),
                           **best_mi(metrics),
                           **circle_columns(metrics, ckpt["model_args"].get("circles", 0)))
                break
    return row


def columns(rows):
    seen = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def by_setting(rows):
    """{setting: [rows]} in the order the settings first appear."""
    groups = {}
    for row in rows:
        groups.setdefault(row["setting"], []).append(row)
    return groups


def mean_std(values):
    """"0.600 ± 0.100"; counts (all ints) without trailing zeros: "3.5 ± 0.5"."""
    values = [v for v in values if v not in (None, "")]
    if not values:
        return ""
    spec = ".3g" if all(isinstance(v, int) for v in values) else ".3f"
    if len(values) == 1:
        return f"{values[0]:{spec}}"
    return f"{statistics.fmean(values):{spec}} ± {statistics.pstdev(values):{spec}}"


def add_udr(folder, rows, data):
    """UDR (Spearman: udr; Lasso: udr_lasso) of each scored trial whose setting has two or more
    scored seeds, among those seeds (evaluate.udr_of_runs)."""
    for group in by_setting([r for r in rows if "protocol" in r]).values():
        if len(group) < 2:
            continue
        models = [checkpoint.rebuild_model(checkpoint.load(folder / r["trial"])) for r in group]
        result = evaluate.udr_of_runs(models, data)
        for i, row in enumerate(group):
            row["udr"] = round(result["spearman"]["udr"][i], 4)
            row["udr_lasso"] = round(result["lasso"]["udr"][i], 4)


def udr_agreement(rows):
    """Spearman's rank correlation between UDR and each score across the trials that have both
    (Duan et al. 2020 report it against the supervised scores)."""
    from scipy.stats import spearmanr

    have = [r for r in rows if "udr" in r]
    if len(have) < 3:
        return ""
    varies = lambda k: len({r[k] for r in have}) > 1  # noqa: E731  (else ρ is undefined)
    rho = {k: spearmanr([r["udr"] for r in have], [r[k] for r in have])[0]
           for k in SCORES if varies(k) and varies("udr")}
    if not rho:
        return ""
    return (f"\nUDR against each score, Spearman's ρ over {len(have)} trials: " +
            ", ".join(f"{SCORES[k][0]} {v:.2f}" for k, v in rho.items()) + "\n")


def markdown(rows):
    """Per setting: the mean ± std (population) of each number over its scored seeds (trials
    with a full or quick protocol at their last checkpoint); the others are listed apart, so
    that a trial still training never mixes into a mean."""
    names = {**{k: name for k, (name, _) in SCORES.items()}, "udr": "UDR (Spearman)",
             "udr_lasso": "UDR (Lasso)", "recon": "recon (nats)", "kl": "KL (nats)",
             "latents_on": f"latents ≥ {ACTIVE_KL} nats"}
    keys = [k for k in names if any(k in r for r in rows)]
    lines = ["| setting | scored seeds | " + " | ".join(names[k] for k in keys) +
             " | not scored yet (seed: step) |", "|---|---|" + "---|" * (len(keys) + 1)]
    for name, group in by_setting(rows).items():
        scored = [r for r in group if "protocol" in r]
        seeds = ", ".join(str(r["seed"]) for r in scored)
        later = ", ".join(f"{r['seed']}: {r['step']:,}" for r in group if "protocol" not in r)
        lines.append(f"| {name} | {seeds} | " +
                     " | ".join(mean_std([r.get(k) for r in scored]) for k in keys) +
                     f" | {later} |")
    return "\n".join(lines) + "\n" + udr_agreement(rows)


def plot(rows, path):
    """One panel per score: each setting's seeds as points, their mean as a bar."""
    keys = [k for k in SCORES if any(k in r for r in rows)]
    groups = by_setting(rows)
    if not keys:
        return
    with runlog.figure(path, (3.2 * len(keys), 3.6), "tight") as fig:
        for ax, key in zip(fig.subplots(1, len(keys), squeeze=False)[0], keys):
            for x, group in enumerate(groups.values()):
                values = [r[key] for r in group if key in r]
                ax.plot([x] * len(values), values, "o", alpha=0.6, color=f"C{x}")
                if values:
                    ax.plot([x - 0.3, x + 0.3], [statistics.fmean(values)] * 2, "-", color="k")
            ax.set_xticks(range(len(groups)), list(groups), rotation=30, ha="right", fontsize=8)
            ax.set(title=SCORES[key][0], ylim=(0, 1.02))


def rotation_strips(folder, rows, data):
    """{trial: (label, S, n, 64, 64 images, tick labels)}: each scored trial's rotation latent on
    traverse.py's samples, the other latents at each sample's posterior mean: its orientation
    latent swept over STRIP, or in a trial with circles its first circle through a full turn
    in CIRCLE_STRIP angles."""
    xs = traverse.sample_inputs(data)
    strips = {}
    for r in rows:
        if "protocol" not in r:
            continue
        model = checkpoint.rebuild_model(checkpoint.load(folder / r["trial"]))
        if model.circles:
            k, n = 0, CIRCLE_STRIP
            label = (f"{r['trial']}: circle z0, normalised MI with orientation "
                     f"{r['circle0_mi_orientation']:.2f}, with shape {r['circle0_mi_shape']:.2f}, "
                     f"orientation within shape {r['circle0_mi_orientation_within_shape']:.2f}")
        else:
            k, n = r["z_orientation"], STRIP[2]
            label = (f"{r['trial']}: z{k}, normalised MI with orientation "
                     f"{r['mi_orientation']:.2f}, with shape {r['mi_shape_of_z_orientation']:.2f}")
        values = traverse.sweep_values(model, k, STRIP[1], n)
        ticks = [f"{v:.0f}°" for v in values.rad2deg().tolist()] if model.circles else [
            f"{v:g}" for v in values.tolist()]
        strips[r["trial"]] = label, torch.stack(
            [traverse.traverse(model, x[None], k, values) for x in xs]).numpy(), ticks
    return strips


def plot_rotation(strips, path):
    """One panel per trial: its strips as rows (samples), columns the z values."""
    if not strips:
        return
    n = max(len(ticks) for _, _, ticks in strips.values())
    with runlog.figure(path, (n * 0.7, len(strips) * 3.0), "tight") as fig:
        for ax, (label, images, ticks) in zip(fig.subplots(len(strips), 1, squeeze=False)[:, 0],
                                              strips.values()):
            ax.imshow(np.concatenate([np.concatenate(list(row), axis=1) for row in images]),
                      cmap="gray", vmin=0, vmax=1)
            ax.set_title(label, fontsize=8)
            size = images.shape[-1]
            ax.set_xticks([size * (j + 0.5) for j in range(len(ticks))], ticks, fontsize=7)
            ax.set_yticks([])


def write(folder, data_path=None):
    """Rewrite the summary files of a sweep folder from its trials' files. data_path: the
    official file its trials were scored on (UDR and the rotation strips encode images too);
    None: dataset.load's default."""
    folder = Path(folder)
    runs = sorted(p for p in folder.iterdir() if (p / "ckpt.pt").is_file())
    rows = [trial_row(run) for run in runs]
    # None: nothing scored, nothing to encode
    data = dataset.load(data_path) if any("protocol" in r for r in rows) else None
    add_udr(folder, rows, data)
    with open(folder / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns(rows) or ["trial"])
        writer.writeheader()
        writer.writerows(rows)
    (folder / "summary.md").write_text(markdown(rows))
    plot(rows, folder / "summary.png")
    if data is not None:
        plot_rotation(rotation_strips(folder, rows, data), folder / "rotation.png")
    return rows


def main(argv=None):
    p = cli.parser("Rewrite a sweep folder's summary.csv, summary.md, summary.png and "
                   "rotation.png from its trials.")
    p.add_argument("folder", help="the sweep folder (a folder of run folders)")
    p.add_argument("--data", default=None,
                   help="the official dSprites npz the sweep's --data gave its trials "
                        f"({cli.DATA_DEFAULT})")
    args = p.parse_args(argv)
    folder = args.folder
    if not Path(folder).is_dir():
        raise cli.UserError(f"no sweep folder at {folder}")
    rows = write(folder, args.data)
    print(f"{len(rows)} trials -> {Path(folder) / 'summary.csv'}, summary.md, summary.png, "
          "rotation.png")
    return 0


if __name__ == "__main__":
    cli.run_script(main)
