"""Disentanglement scores of a trained β-VAE on dSprites: β-VAE, FactorVAE, MIG, DCI, SAP; UDR.

    python evaluate.py results/beta4_H_z10_seed0/ckpt.pt --quick      # 1/20-1/10 of the points
    python evaluate.py results/beta4_H_z10_seed0/ckpt.pt --seed 0 1 2  # full protocol, 3 plans
    python evaluate.py --udr results/study/beta4_H_z10_seed0 results/study/beta4_H_z10_seed1

Protocols of google-research/disentanglement_lib: the β-VAE score (Higgins et al. 2017), the
FactorVAE score (Kim & Mnih 2018), the mutual information gap (Chen et al. 2018), DCI (Eastwood
& Williams 2018) and SAP (Kumar et al. 2018), on the encoder mean μ(x) (--sample: one posterior
sample per image); a circle latent (train.py --circles) is represented by its mean angle in
[-π, π], one number with its seam at ±π. Beside MIG's table, each latent's orientation MI within
shape. Prints a table and writes metrics.json, latent_factor_mi.png (normalised mutual
information, latents x factors) and dci_importance.png (DCI's importance matrix) next to the
checkpoint (--quick: metrics_quick.json and *_quick.png). The whole sampling plan is drawn first
from one seeded numpy generator; each distinct image it touches is then encoded once and every
score reads its codes from that table. --udr ranks runs of one setting that differ only in seed
by how alike their latents are, without labels (Duan et al. 2020; scores.py).
"""
import copy
import json
import sys
import time
import warnings

import numpy as np
import torch

import checkpoint
import cli
import dataset
import runlog
import scores
from dataset import FACTOR_NAMES, FACTOR_SIZES, NUM_IMAGES
from loss import kl_per_dim

# Sample counts of disentanglement_lib's metric configs. --quick keeps the 10,000 images of MIG
# and of the FactorVAE variance estimate and takes a tenth of DCI's and SAP's points, and a
# twentieth of the β-VAE and FactorVAE scores' points: those draw nine in ten of the images to
# encode, while DCI's boosted trees take about as long at 1,000 points as at 500.
PROTOCOL = {"n_beta_train": 10_000, "n_beta_eval": 5_000, "n_fvae_train": 10_000,
            "n_fvae_eval": 5_000, "n_variance": 10_000, "n_mig": 10_000, "n_dci_train": 10_000,
            "n_dci_test": 5_000, "n_sap_train": 10_000, "n_sap_test": 5_000, "batch": 64}
QUICK = {"n_beta_train": 500, "n_beta_eval": 250, "n_fvae_train": 500, "n_fvae_eval": 250,
         "n_dci_train": 1_000, "n_dci_test": 500, "n_sap_train": 1_000, "n_sap_test": 500}
UDR_IMAGES = 1_000  # images each model encodes for UDR (Duan et al. 2020)
PRUNE_STD = 0.05  # FactorVAE: latents with a global std below this count as collapsed
MIG_BINS = 20
CPU_CHUNK = 64  # on CPU the encoder runs faster on cache-sized pieces than on 4096 at once


# ---------------------------------------------------------------- sampling plan

def _random_factors(rng, shape):
    """(*shape, 5) factor classes, each factor uniform over its classes."""
    return np.stack([rng.integers(size, size=shape) for size in FACTOR_SIZES], axis=-1)


def _index(classes):
    """dataset.factors_to_index for numpy arrays."""
    return dataset.factors_to_index(torch.from_numpy(classes)).numpy()


def _factors(index):
    """dataset.index_to_factors for numpy arrays."""
    return dataset.index_to_factors(torch.from_numpy(index)).numpy()


def _fix_factor(rng, n, batch, pairs):
    """n groups of `batch` images (or image pairs) sharing the value of one random factor k:
    returns (k (n,), indices (n, batch) or (n, 2, batch))."""
    k = rng.integers(len(FACTOR_NAMES), size=n)
    keep = (np.arange(len(FACTOR_NAMES)) == k[:, None, None])  # n, 1, 5
    if pairs:  # β-VAE: pair i shares factor k, other factors independent
        f1, f2 = _random_factors(rng, (n, batch)), _random_factors(rng, (n, batch))
        return k, np.stack([_index(f1), _index(np.where(keep, f1, f2))], axis=1)
    f = _random_factors(rng, (n, batch))  # FactorVAE: the whole batch shares factor k
    return k, _index(np.where(keep, f[:, :1], f))


def plan(rng, n_beta_train=10_000, n_beta_eval=5_000, n_fvae_train=10_000, n_fvae_eval=5_000,
         n_variance=10_000, n_mig=10_000, n_dci_train=10_000, n_dci_test=5_000,
         n_sap_train=10_000, n_sap_test=5_000, batch=64):
    """Every image draw of the five protocols, as official indices, from numpy generator rng.

    beta_train/beta_eval: (k, (n, 2, batch)); fvae_train/fvae_eval: (k, (n, batch));
    variance, mig, dci_*, sap_*: (n,) random images. k is the factor held fixed in each point
    or vote.
    """
    return {"beta_train": _fix_factor(rng, n_beta_train, batch, pairs=True),
            "beta_eval": _fix_factor(rng, n_beta_eval, batch, pairs=True),
            "variance": _index(_random_factors(rng, n_variance)),
            "fvae_train": _fix_factor(rng, n_fvae_train, batch, pairs=False),
            "fvae_eval": _fix_factor(rng, n_fvae_eval, batch, pairs=False),
            "mig": _index(_random_factors(rng, n_mig)),
            **{name: _index(_random_factors(rng, n)) for name, n in (
                ("dci_train", n_dci_train), ("dci_test", n_dci_test),
                ("sap_train", n_sap_train), ("sap_test", n_sap_test))}}


def plan_indices(p):
    """All indices a plan touches, flattened (with repeats)."""
    arrays = [v[1] if isinstance(v, tuple) else v for v in p.values()]
    return np.concatenate([a.ravel() for a in arrays])


# ---------------------------------------------------------------- scores (pure functions)
# `codes` is a lookup table: codes[i] is the representation of the image with official index i
# (an array of NUM_IMAGES rows; only the rows a plan touches are read).

def beta_vae_score(codes, train, evaluation):
    """Higgins et al.: logistic regression predicts the fixed factor from the mean absolute code
    difference over each point's pairs. disentanglement_lib takes scikit-learn's defaults; its
    published runs predate scikit-learn 0.22, whose default was liblinear one-vs-rest; these are
    the defaults since 0.22 (lbfgs, multinomial, 100 iterations)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    def features(points):
        k, idx = points
        z = codes[idx]  # n, 2, batch, d
        return np.abs(z[:, 0] - z[:, 1]).mean(axis=1, dtype=np.float64), k

    x, y = features(train)
    clf = LogisticRegression()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # reported as "converged" instead
        clf.fit(x, y)
    return {"train_accuracy": float(clf.score(x, y)),
            "eval_accuracy": float(clf.score(*features(evaluation))),
            "converged": bool(np.max(clf.n_iter_) < clf.max_iter)}


def factor_vae_score(codes, variance_index, train, evaluation, threshold=PRUNE_STD):
    """Kim & Mnih: the latent of least normalised variance in a batch with one factor fixed votes
    for that factor; a majority-vote classifier latent -> factor is scored on fresh votes."""
    global_var = codes[variance_index].var(axis=0, ddof=1, dtype=np.float64)
    active = np.flatnonzero(np.sqrt(global_var) >= threshold)
    if len(active) == 0:  # every latent collapsed: no votes can be cast
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}

    def votes(points):  # (latents, factors) vote counts
        k, idx = points
        local_var = codes[idx][:, :, active].var(axis=1, ddof=1, dtype=np.float64)  # n, active
        latent = active[np.argmin(local_var / global_var[active], axis=1)]
        v = np.zeros((codes.shape[1], len(FACTOR_NAMES)), dtype=np.int64)
        np.add.at(v, (latent, k), 1)
        return v

    train_votes = votes(train)
    vote = train_votes.argmax(axis=1)  # the factor each latent stands for
    accuracy = lambda v: float(v[np.arange(len(v)), vote].sum() / v.sum())  # noqa: E731
    return {"train_accuracy": accuracy(train_votes), "eval_accuracy": accuracy(votes(evaluation)),
            "num_active_dims": len(active)}


def discretize(z, bins=MIG_BINS):
    """Each column into `bins` equal-width bins over its observed range (disentanglement_lib's
    _histogram_discretize: np.histogram's edges, then np.digitize)."""
    return np.stack([np.digitize(col, np.histogram(col, bins)[1][:-1]) for col in z.T], axis=1)


def mig(codes, index, bins=MIG_BINS):
    """Chen et al.'s mutual information gap on the images `index`.

    mi: I(z_j; v_k) / H(v_k), latents x factors; mig: mean over factors of the gap between the
    two largest entries of each column; mig_no_shape: the same without the shape factor.
    """
    from sklearn.metrics import mutual_info_score

    v = _factors(index)  # n, 5 factor classes
    z = discretize(codes[index], bins)
    mi = np.array([[mutual_info_score(v[:, k], z[:, j]) for k in range(v.shape[1])]
                   for j in range(z.shape[1])])
    entropy = np.array([mutual_info_score(f, f) for f in v.T])
    mi = mi / entropy
    # A zero row leaves the top two of every column unchanged (MI >= 0) and covers one latent.
    top = np.sort(np.vstack([mi, np.zeros_like(entropy)]), axis=0)[::-1]
    gap = top[0] - top[1]
    return {"mig": float(gap.mean()), "mig_no_shape": float(gap[1:].mean()),
            "mig_per_factor": dict(zip(FACTOR_NAMES, gap.tolist())), "mi": mi.tolist(),
            "entropy": dict(zip(FACTOR_NAMES, entropy.tolist())),
            "orientation_mi_within_shape": mi_within(z, v, "orientation", "shape").tolist()}


def mi_within(z, v, factor, given):
    """Each latent's normalised MI with `factor` among images that share `given`:
    I(z_j; v_factor | v_given) / H(v_factor | v_given), on discretised codes z (n, d) and
    factor classes v (n, 5). For orientation given shape, it tells a latent that turns each
    shape apart from one that only tells the shapes apart (whose orientation MI it keeps). A
    perfect rotation latent stays below 1 there: a square looks alike every 90°, an ellipse
    every 180°, so part of H(orientation | shape) is not in the images."""
    from sklearn.metrics import mutual_info_score

    f, g = FACTOR_NAMES.index(factor), FACTOR_NAMES.index(given)
    mi, entropy = np.zeros(z.shape[1]), 0.0
    for value in np.unique(v[:, g]):
        rows = v[:, g] == value
        p = rows.mean()
        entropy += p * mutual_info_score(v[rows, f], v[rows, f])
        mi += p * np.array([mutual_info_score(v[rows, f], col) for col in z[rows].T])
    return mi / entropy


def score(codes, p):
    """All five scores of lookup table `codes` on plan p."""
    split = lambda name: (codes[p[f"{name}_train"]], _factors(p[f"{name}_train"]),  # noqa: E731
                          codes[p[f"{name}_test"]], _factors(p[f"{name}_test"]))
    return {"beta_vae": beta_vae_score(codes, p["beta_train"], p["beta_eval"]),
            "factor_vae": factor_vae_score(codes, p["variance"], p["fvae_train"], p["fvae_eval"]),
            **mig(codes, p["mig"]),
            # DCI's factors fit in as many processes as torch has threads (sweep.py sets them
            # per trial), not on every core of a machine that other trials share.
            "dci": scores.dci(*split("dci"), n_jobs=torch.get_num_threads()),
            "sap": scores.sap(*split("sap"))}


# ---------------------------------------------------------------- model

def encode(model, data, index, batch_size=4096, log=None):
    """Encoder mean and log-variance of the images at `index` (1-D), as float32 numpy arrays
    (len(index), latent_dim). Images are drawn batch_size at a time on data's device."""
    device = next(model.parameters()).device
    chunk, layout = batch_size, torch.contiguous_format
    if device.type == "cpu":
        # On CPU, convolutions with weights and inputs in channels-last layout run about 2.5x
        # faster than in the default one; a copy keeps the caller's model (training) as it was.
        chunk, layout = CPU_CHUNK, torch.channels_last
        model = copy.deepcopy(model).to(memory_format=layout)
    out = []
    with torch.no_grad():
        for start in range(0, len(index), batch_size):
            imgs = data.images(torch.from_numpy(index[start:start + batch_size])).to(device)
            out += [torch.cat(model.encode(dataset.as_input(c).contiguous(memory_format=layout)),
                              dim=1).cpu() for c in imgs.split(chunk)]
            if log:
                log(min(start + batch_size, len(index)), len(index))
    z = torch.cat(out).numpy()
    return z[:, :z.shape[1] // 2], z[:, z.shape[1] // 2:]


def encode_eval(model, data, drawn, batch_size=4096, log=None):
    """Encode each distinct index of `drawn` once, in eval mode (the mode is restored after):
    returns (distinct indices, mu, logvar)."""
    index = np.unique(drawn)
    was_training = model.training
    try:
        mu, logvar = encode(model.eval(), data, index, batch_size, log)
    finally:
        model.train(was_training)
    if not (np.isfinite(mu).all() and np.isfinite(logvar).all()):
        raise cli.UserError("the encoder returned non-finite values; the model is broken")
    return index, mu, logvar


def lookup(index, codes):
    """The table scores read from: row i holds the code of image i (NaN: never drawn)."""
    table = np.full((NUM_IMAGES, codes.shape[1]), np.nan, dtype=np.float32)
    table[index] = codes
    return table


def mean_kl(index, mu, logvar, images, circles=0):
    """Each latent's KL, averaged over `images` (official indices, repeats counted); the first
    `circles` latents are circles (model.py)."""
    at = np.searchsorted(index, images)
    return kl_per_dim(torch.from_numpy(mu[at]), torch.from_numpy(logvar[at]), circles).tolist()


def latent_factor_mi(model, data, seed=0, n=PROTOCOL["n_mig"], batch_size=4096):
    """What traverse.py needs to name latents, without the classifier scores: the normalised
    MI (latents x factors) and each latent's KL, on MIG's n random images."""
    images = _index(_random_factors(np.random.default_rng(seed), n))
    index, mu, logvar = encode_eval(model, data, images, batch_size)
    return mig(lookup(index, mu), images)["mi"], mean_kl(index, mu, logvar, images, model.circles)


def evaluate_model(model, data, seed=0, quick=False, sample=False, batch_size=4096,
                   log=None, **counts):
    """Scores of `model` on `data` (a dataset.DSprites), reproducible for a given seed.

    quick: fewer classifier samples (QUICK: β-VAE, FactorVAE, DCI, SAP). sample: represent
    each image by one posterior sample (seeded), the same wherever the plan draws that image
    again, instead of the mean. counts: overrides of plan()'s sample counts.
    log(done, total): optional progress callback while encoding. Returns a JSON-ready dict: the
    scores, mi (latents x factors), kl_per_dim (mean KL of each latent on the MIG images) and
    the settings used. The model's training mode is restored; torch's RNG is not touched.
    """
    return evaluate_seeds(model, data, [seed], quick, sample, batch_size, log, **counts)[0]


def evaluate_seeds(model, data, seeds, quick=False, sample=False, batch_size=4096, log=None,
                   **counts):
    """evaluate_model for each seed, encoding every image once for all of them: a list of
    results, each as evaluate_model's (its "seconds": the whole evaluation)."""
    t0 = time.perf_counter()
    counts = {**PROTOCOL, **(QUICK if quick else {}), **counts}
    rngs = [np.random.default_rng(seed) for seed in seeds]
    plans = [plan(rng, **counts) for rng in rngs]
    drawn = [plan_indices(p) for p in plans]
    index, mu, logvar = encode_eval(model, data, np.concatenate(drawn), batch_size, log)
    results = []
    for seed, rng, p, d in zip(seeds, rngs, plans, drawn):
        own = np.unique(d)  # this seed's images, as if it had been evaluated alone
        at = np.searchsorted(index, own)
        m, lv = mu[at], logvar[at]
        codes = m + np.exp(0.5 * lv) * rng.standard_normal(m.shape, np.float32) if sample else m
        results.append({**score(lookup(own, codes), p),
                        "kl_per_dim": mean_kl(own, m, lv, p["mig"], model.circles),
                        "factors": list(FACTOR_NAMES), "seed": seed,
                        "representation": "sample" if sample else "mean", "counts": counts,
                        "images_drawn": len(d), "images_encoded": len(own)})
    for r in results:
        r["seconds"] = round(time.perf_counter() - t0, 2)
    return results


# Each score's id (metrics.json, sweep summaries), printed name, and where a result holds it.
SCORES = {"beta_vae": ("β-VAE score (Higgins 2017)", lambda r: r["beta_vae"]["eval_accuracy"]),
          "factor_vae": ("FactorVAE score (Kim 2018)", lambda r: r["factor_vae"]["eval_accuracy"]),
          "mig": ("MIG (Chen 2018)", lambda r: r["mig"]),
          "mig_no_shape": ("MIG without shape", lambda r: r["mig_no_shape"]),
          "dci_disentanglement": ("DCI disentanglement", lambda r: r["dci"]["disentanglement"]),
          "dci_completeness": ("DCI completeness", lambda r: r["dci"]["completeness"]),
          "dci_informativeness": ("DCI informativeness", lambda r: r["dci"]["informativeness"]),
          "sap": ("SAP (Kumar 2018)", lambda r: r["sap"]["sap"])}


def summary(results):
    """Each score's mean and population standard deviation (ddof 0) over several seeds' results."""
    return {key: (float(np.mean([get(r) for r in results])),
                  float(np.std([get(r) for r in results]))) for key, (_, get) in SCORES.items()}


# ---------------------------------------------------------------- report

def table(results):
    """The scores as a small text table; over several seeds, the mean and its spread."""
    first, spread = results[0], len(results) > 1
    notes = {"beta_vae": "" if all(r["beta_vae"]["converged"] for r in results)
             else "logistic regression did not converge",
             "factor_vae": f"{first['factor_vae']['num_active_dims']}/"
                           f"{len(first['kl_per_dim'])} active latents"}
    lines = [f"{'score':28s} {'train':>6s} {'eval':>6s}" + ("   std" if spread else "")]
    train = {"beta_vae": lambda r: r["beta_vae"]["train_accuracy"],
             "factor_vae": lambda r: r["factor_vae"]["train_accuracy"],
             "dci_informativeness": lambda r: r["dci"]["informativeness_train"]}
    for key, (mean, std) in summary(results).items():
        tr = f"{np.mean([train[key](r) for r in results]):.3f}" if key in train else ""
        lines.append(f"{SCORES[key][0]:28s} {tr:>6s} {mean:6.3f}" +
                     (f" {std:5.3f}" if spread else "") + f"  {notes.get(key, '')}".rstrip())
    return "\n".join(lines)


def plot_matrix(result, matrix, title, path):
    """Heatmap of a latents x factors matrix, latents sorted by KL (largest first)."""
    matrix, kl = np.array(matrix), np.array(result["kl_per_dim"])
    order = np.argsort(-kl, kind="stable")
    with runlog.figure(path, (6, 1.2 + 0.4 * len(order))) as fig:
        ax = fig.subplots()
        im = ax.imshow(matrix[order], cmap="viridis", vmin=0, vmax=1, aspect="auto")
        for i, row in enumerate(matrix[order]):
            for k, value in enumerate(row):
                ax.text(k, i, f"{value:.2f}", ha="center", va="center", fontsize=8,
                        color="black" if value > 0.6 else "white")
        ax.set_xticks(range(matrix.shape[1]), result["factors"])
        ax.set_yticks(range(len(order)), [f"z{j} (KL {kl[j]:.2f})" for j in order])
        ax.set_title(title, fontsize=10)
        fig.colorbar(im, ax=ax)


def plot_figures(result, out, suffix=""):
    """latent_factor_mi.png (normalised MI) and dci_importance.png (DCI's importance matrix, each
    factor's column summing to 1); returns their paths."""
    paths = out / f"latent_factor_mi{suffix}.png", out / f"dci_importance{suffix}.png"
    plot_matrix(result, result["mi"], f"normalised MI I(z; v) / H(v); MIG {result['mig']:.3f}",
                paths[0])
    dci = result["dci"]
    plot_matrix(result, dci["importance"], f"DCI importance; D {dci['disentanglement']:.3f}, "
                f"C {dci['completeness']:.3f}, I {dci['informativeness']:.3f}", paths[1])
    return paths


def udr_of_runs(models, data, seed=0, n=UDR_IMAGES):
    """UDR (Spearman and Lasso) of models of one setting: each encodes the same n random images
    (seeded); latents with a mean KL <= 0.01 nats on them are left out."""
    images = _index(_random_factors(np.random.default_rng(seed), n))
    codes, kls = [], []
    for model in models:
        index, mu, logvar = encode_eval(model, data, images)
        codes.append(mu[np.searchsorted(index, images)])
        kls.append(mean_kl(index, mu, logvar, images, model.circles))
    return {method: scores.udr(codes, kls, method=method) for method in ("spearman", "lasso")}


def build_parser():
    p = cli.parser("Disentanglement scores (β-VAE, FactorVAE, MIG, DCI, SAP) of a trained β-VAE "
                   "on dSprites; --udr ranks runs without labels.")
    p.add_argument("ckpt", nargs="+", help="checkpoint written by train.py (or its run folder); "
                                           "results are written next to it; with --udr, 2 or "
                                           "more runs of one setting")
    p.add_argument("--udr", action="store_true",
                   help="UDR of the runs given, which differ only in seed: printed, nothing "
                        "written (default: off)")
    p.add_argument("--seed", type=int, nargs="+", default=[0],
                   help="seed(s) of the sampling plan (and of --sample's noise); several give "
                        "each score's mean and std over them, every image encoded once "
                        "(default: 0)")
    p.add_argument("--quick", action="store_true",
                   help="fewer classifier points (train/eval): β-VAE and FactorVAE 500/250, "
                        "DCI and SAP 1,000/500, instead of 10,000/5,000; MIG and the variance "
                        "estimate keep 10,000 images (default: off, full protocol)")
    p.add_argument("--sample", action="store_true",
                   help="represent each image by one posterior sample (reused wherever the plan "
                        "draws it again) instead of the encoder mean (default: off, mean)")
    cli.add_data_arguments(p)
    cli.add_device_argument(p)
    p.add_argument("--batch-size", type=int, default=4096,
                   help="images drawn and encoded per batch; on CPU the encoder takes them 64 at "
                        "a time (default: 4096)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    cli.require("batch-size", args.batch_size, 1)
    cli.require_seeds(args.seed)
    if args.udr != (len(args.ckpt) > 1):
        raise cli.UserError("give one checkpoint, or --udr and two or more" if not args.udr else
                            "--udr compares runs: give two or more")
    if args.udr and (len(args.seed) > 1 or args.quick or args.sample):
        raise cli.UserError("--udr encodes 1,000 images of one --seed by the encoder mean; it "
                            "takes neither several seeds, --quick nor --sample")
    if args.udr and len({checkpoint.run_dir(p).resolve() for p in args.ckpt}) < len(args.ckpt):
        raise cli.UserError("--udr: a run is given twice; UDR compares distinct seeds")
    device = cli.pick_device(args.device)
    ckpts = [checkpoint.load(path) for path in args.ckpt]
    models = [checkpoint.rebuild_model(ckpt, device) for ckpt in ckpts]
    if args.sample and models[0].circles:
        raise cli.UserError("--sample draws Gaussian noise; this model has circle latents, "
                            "whose code is their mean angle")
    data = dataset.load(args.data, args.download, device)
    if args.udr:
        names = [checkpoint.run_dir(path).name for path in args.ckpt]
        for result in udr_of_runs(models, data, args.seed[0]).values():
            print(scores.udr_table(result, names) + "\n")
        return 0
    return score_run(args, ckpts[0], models[0], data, device)


def score_run(args, ckpt, model, data, device):
    """The scores of one run: printed, and written to metrics(_quick).json and figures."""
    path, out = args.ckpt[0], checkpoint.run_dir(args.ckpt[0])
    print(f"evaluating {path} (step {ckpt['step']}) on {device}: "
          f"{'quick' if args.quick else 'full'} protocol, seed {', '.join(map(str, args.seed))}, "
          f"{'posterior sample' if args.sample else 'encoder mean'}")

    def log(done, total):  # on a terminal every batch; in a log file the first and the last
        if sys.stdout.isatty() or done == total or done <= args.batch_size:
            runlog.show(f"encoding {total:,} distinct images: {done:,} done", final=done == total)

    results = evaluate_seeds(model, data, args.seed, args.quick, args.sample, args.batch_size, log)
    # The first seed's result in full; with several seeds, every seed's scores and their spread.
    metrics = {"checkpoint": str(path), "step": ckpt["step"], "device": str(device),
               "data": "rendered" if data.source == "rendered" else
               str(args.data or dataset.DEFAULT_PATH), "quick": args.quick, **results[0]}
    if len(results) > 1:
        metrics["by_seed"] = [{"seed": r["seed"], **{k: get(r) for k, (_, get) in SCORES.items()}}
                              for r in results]
        metrics["mean_std"] = summary(results)
    # A quick look never overwrites the full protocol's results (traverse.py reads metrics.json).
    suffix = "_quick" if args.quick else ""
    json_path = out / f"metrics{suffix}.json"
    with open(json_path, "w") as f:
        json.dump(metrics, f, indent=1)
    pngs = plot_figures(results[0], out, suffix)
    print(f"done in {results[0]['seconds']:.0f} s "
          f"({sum(r['images_drawn'] for r in results):,} image draws)\n")
    print(table(results))
    print(f"\nwrote {json_path}, {pngs[0]} and {pngs[1]}")
    return 0


if __name__ == "__main__":
    cli.run_script(main)
