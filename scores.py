"""Disentanglement scores as pure functions of codes and factor classes: DCI, SAP and UDR.

numpy, scipy and scikit-learn only (no torch, nothing of this project), so that they can be
tested on made-up data. Protocols of google-research/disentanglement_lib:

- dci: Eastwood & Williams 2018, "A framework for the quantitative evaluation of disentangled
  representations" (ICLR): disentanglement, completeness and informativeness from the feature
  importances of gradient boosted trees, one classifier per factor.
- sap: Kumar et al. 2018, "Variational inference of disentangled latent concepts from unlabeled
  observations" (ICLR), Section 3, in disentanglement_lib's variant for discrete factors: the
  test accuracy of a linear SVM on one latent predicting one factor.
- udr: Duan et al. 2020, "Unsupervised model selection for variational disentangled
  representation learning" (ICLR), Section 3, equation (1): how alike the latents of models
  that differ only in their seed are, without the factors.

Conventions: codes z are (n, d) arrays (encoder means), factors v are (n, K) integer classes;
every function returns a JSON-ready dict (floats and nested lists).
"""
import warnings

import numpy as np

SAP_C = 0.01  # disentanglement_lib's LinearSVC regularisation for the discrete SAP
UDR_KL_THRESHOLD = 0.01  # latents with a mean KL at or below this are uninformative (Duan 2020)
UDR_LASSO_ALPHA = 0.1


def _check(z_train, v_train, z_test, v_test):
    """The arrays as float codes and integer classes, with matching shapes."""
    z_train, z_test = np.asarray(z_train), np.asarray(z_test)
    v_train, v_test = np.asarray(v_train), np.asarray(v_test)
    for name, a in (("z_train", z_train), ("v_train", v_train), ("z_test", z_test),
                    ("v_test", v_test)):
        if a.ndim != 2 or len(a) == 0:
            raise ValueError(f"{name} must be a non-empty 2-D array, got shape {a.shape}")
    if len(z_train) != len(v_train) or len(z_test) != len(v_test):
        raise ValueError(f"codes and factors must have as many rows: z_train {z_train.shape}, "
                         f"v_train {v_train.shape}, z_test {z_test.shape}, v_test {v_test.shape}")
    if z_train.shape[1] != z_test.shape[1] or v_train.shape[1] != v_test.shape[1]:
        raise ValueError("train and test must have the same latents and factors")
    return z_train, v_train, z_test, v_test


# ---------------------------------------------------------------- DCI

def _one_minus_entropy(weights):
    """1 - H(p) / log(m) for each row of `weights` (rows x m, non-negative), p the row
    normalised to sum 1 (0 log 0 = 0). An all-zero row scores 0, as a uniform row would:
    disentanglement_lib adds 1e-11 to every entry, which makes such a row uniform."""
    from scipy.special import xlogy

    total = weights.sum(axis=1, keepdims=True)
    p = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
    m = weights.shape[1]
    h = -xlogy(p, p).sum(axis=1) / np.log(m) if m > 1 else np.zeros(len(weights))
    return np.where(total[:, 0] > 0, 1.0 - h, 0.0)


def dci_from_importance(importance):
    """Eastwood & Williams' disentanglement and completeness of an importance matrix R
    (d latents x K factors, non-negative), as disentanglement_lib computes them.

    disentanglement D = sum_j rho_j (1 - H_K(P_j.)): P_j. is latent j's row normalised to sum 1,
    H_K the entropy in base K, rho_j = (row j's sum) / (sum of R).
    completeness C = sum_k w_k (1 - H_d(P_.k)): P_.k is factor k's column normalised, H_d in
    base d, w_k = (column k's sum) / (sum of R). The classifiers' importances sum to 1 in every
    column, so C is then the plain mean over factors.
    An all-zero row (a latent no classifier used) or column (a factor that used no latent)
    weighs 0 and scores 0; an all-zero R scores D = C = 0 (all as in disentanglement_lib).
    """
    r = np.abs(np.asarray(importance, dtype=np.float64))
    if r.ndim != 2 or 0 in r.shape:
        raise ValueError(f"importance must be a non-empty 2-D array, got shape {r.shape}")
    per_latent, per_factor = _one_minus_entropy(r), _one_minus_entropy(r.T)
    total = r.sum()
    rho = r.sum(axis=1) / total if total > 0 else np.zeros(r.shape[0])
    w = r.sum(axis=0) / total if total > 0 else np.zeros(r.shape[1])
    return {"disentanglement": float(rho @ per_latent), "completeness": float(w @ per_factor),
            "disentanglement_per_latent": per_latent.tolist(),
            "completeness_per_factor": per_factor.tolist()}


def _boosted_trees(x_train, y_train, x_test, y_test, random_state):
    """One factor's classifier: (feature importances, train accuracy, test accuracy)."""
    from sklearn.ensemble import GradientBoostingClassifier

    clf = GradientBoostingClassifier(random_state=random_state).fit(x_train, y_train)
    return (np.abs(clf.feature_importances_), float(clf.score(x_train, y_train)),
            float(clf.score(x_test, y_test)))


def dci(z_train, v_train, z_test, v_test, n_jobs=-1, random_state=0):
    """Eastwood & Williams' DCI with disentanglement_lib's protocol: one scikit-learn
    GradientBoostingClassifier (default settings) per factor, fit on the train codes.

    importance: R (d x K), column k = |feature_importances_| of factor k's classifier;
    disentanglement, completeness: dci_from_importance(R); informativeness: the mean test
    accuracy over factors (informativeness_train: on the train points).
    n_jobs: factors fitted at once (joblib processes; -1: every core). The classifiers are
    seeded (random_state: the order in which each split visits the latents, which settles ties;
    disentanglement_lib leaves it unseeded), so the result does not depend on n_jobs.
    Cost: one tree per class per boosting round, so the factors with most classes are
    dispatched first (BENCHMARKS.md has the time of the full protocol).
    """
    from joblib import Parallel, delayed

    z_train, v_train, z_test, v_test = _check(z_train, v_train, z_test, v_test)
    n_factors = v_train.shape[1]
    # Longest first: with fewer workers than factors the slowest ones must not start last.
    order = sorted(range(n_factors), key=lambda k: -len(np.unique(v_train[:, k])))
    fits = Parallel(n_jobs=n_jobs, batch_size=1)(
        delayed(_boosted_trees)(z_train, v_train[:, k], z_test, v_test[:, k], random_state)
        for k in order)
    fits = [fit for _, fit in sorted(zip(order, fits), key=lambda pair: pair[0])]
    importance = np.stack([f[0] for f in fits], axis=1)  # d, K
    train_acc, test_acc = [f[1] for f in fits], [f[2] for f in fits]
    return {**dci_from_importance(importance),
            "informativeness": float(np.mean(test_acc)),
            "informativeness_train": float(np.mean(train_acc)),
            "informativeness_per_factor": test_acc,
            "importance": importance.tolist()}


# ---------------------------------------------------------------- SAP

def sap(z_train, v_train, z_test, v_test, c=SAP_C):
    """Kumar et al.'s separated attribute predictability, disentanglement_lib's variant for
    discrete factors (the one of its study).

    score_matrix (d x K): the test accuracy of a scikit-learn LinearSVC(C=c,
    class_weight="balanced") fit on latent j alone (train points) to predict factor k.
    sap: mean over factors of the gap between the two largest entries of the factor's column
    (sap_per_factor: the gaps). A latent constant on the train points is not fitted: it scores
    the test accuracy of the most frequent train class, the one class LinearSVC predicts for
    every point when fit on a constant (disentanglement_lib fits it anyway; its continuous
    variant skips such a latent and scores it 0). converged: every fit stopped before max_iter.
    A one-feature linear one-vs-rest classifier can single out only the end classes of an
    ordered factor well, so many-class factors (orientation, positions) score low even on a
    perfect latent.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    z_train, v_train, z_test, v_test = _check(z_train, v_train, z_test, v_test)
    d, n_factors = z_train.shape[1], v_train.shape[1]
    if d < 2:
        raise ValueError(f"SAP needs at least 2 latents, got {d}")
    scores = np.zeros((d, n_factors))
    converged = True
    for j in range(d):
        x_train, x_test = z_train[:, j:j + 1], z_test[:, j:j + 1]
        constant = np.ptp(x_train) == 0
        for k in range(n_factors):
            y_train, y_test = v_train[:, k], v_test[:, k]
            if constant:
                classes, counts = np.unique(y_train, return_counts=True)
                scores[j, k] = np.mean(y_test == classes[np.argmax(counts)])
                continue
            clf = LinearSVC(C=c, class_weight="balanced")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)  # reported as "converged"
                clf.fit(x_train, y_train)
            converged &= bool(np.max(clf.n_iter_) < clf.max_iter)
            scores[j, k] = clf.score(x_test, y_test)
    top = np.sort(scores, axis=0)[::-1]
    gap = top[0] - top[1]
    return {"sap": float(gap.mean()), "sap_per_factor": gap.tolist(),
            "score_matrix": scores.tolist(), "converged": converged}


# ---------------------------------------------------------------- UDR

def _standardise(z):
    """Each column to mean 0 and (population) standard deviation 1; a constant column to 0
    (scikit-learn's StandardScaler)."""
    z = np.asarray(z, dtype=np.float64)
    std = z.std(axis=0)
    return (z - z.mean(axis=0)) / np.where(std > 0, std, 1.0)


def spearman_matrix(za, zb):
    """|Spearman correlation| between every latent of za (rows) and of zb (columns); a constant
    latent correlates 0 with everything."""
    from scipy.stats import rankdata

    ra, rb = (_standardise(rankdata(z, axis=0)) for z in (za, zb))
    return np.abs(ra.T @ rb / len(ra))


def lasso_matrix(za, zb, alpha=UDR_LASSO_ALPHA):
    """|coefficients| of a scikit-learn Lasso(alpha) regressing each latent of zb on all the
    latents of za (both standardised): R[i, j] = |weight of za_i in predicting zb_j|, as
    disentanglement_lib's lasso_correlation_matrix (not symmetrised). The L1 penalty shrinks
    every weight: a latent equal to one of za (up to sign) gets 1 - alpha, not 1."""
    from sklearn.linear_model import Lasso

    if za.shape[1] == 0 or zb.shape[1] == 0:
        return np.zeros((za.shape[1], zb.shape[1]))
    coef = Lasso(alpha=alpha).fit(za, zb).coef_  # d_b x d_a (d_a if zb has one column)
    return np.abs(np.reshape(coef, (zb.shape[1], za.shape[1]))).T


def udr_pair(similarity):
    """Duan et al. 2020, equation (1), on the similarity matrix R of the informative latents
    only (d_a rows of model a, d_b columns of model b):

        UDR_ab = (sum_b max_a R(a,b)^2 / sum_a R(a,b) + sum_a max_b R(a,b)^2 / sum_b R(a,b))
                 / (d_a + d_b)

    An all-zero row or column (a latent the other model has nothing like) counts 0, and so does
    a pair with no informative latent. disentanglement_lib's relative_strength_disentanglement
    averages the column mean and the row mean instead, the same number when d_a = d_b.
    """
    r = np.asarray(similarity, dtype=np.float64)
    if r.size == 0:
        return 0.0

    def strengths(m):  # each column's max^2 / sum
        total = m.sum(axis=0)
        return np.divide(m.max(axis=0) ** 2, total, out=np.zeros_like(total), where=total > 0)

    return float((strengths(r).sum() + strengths(r.T).sum()) / (r.shape[0] + r.shape[1]))


def udr(codes, kls=None, method="spearman", kl_threshold=UDR_KL_THRESHOLD,
        alpha=UDR_LASSO_ALPHA):
    """Duan et al.'s unsupervised disentanglement ranking of models of one setting that differ
    only in their seed, by the protocol of disentanglement_lib's compute_udr_sklearn, with the
    paper's normalisation of each pair (udr_pair).

    codes: one (n, d_i) array per model: its encoder means of the same n images (1,000 in the
    paper). kls: one (d_i,) array per model, each latent's mean KL; a latent with KL <=
    kl_threshold is uninformative and left out of every pair (kls=None: none left out). Each
    model's codes are standardised; for every ordered pair (a, b) of models the informative
    latents' similarity R (d_a x d_b) is |Spearman correlation| (method="spearman") or the
    |weights| of a Lasso(alpha) regressing b's latents on a's (method="lasso"), and
    pairwise[a][b] = udr_pair(R). Model i's udr is the median of pairwise[a][i] over a != i
    (disentanglement_lib's orientation; Spearman's matrix is symmetric, Lasso's is not).
    Returns udr (per model), pairwise (None on the diagonal), num_informative, method.
    """
    if method not in ("spearman", "lasso"):
        raise ValueError(f"method must be 'spearman' or 'lasso', got {method!r}")
    codes = [np.asarray(z) for z in codes]
    if len(codes) < 2:
        raise ValueError(f"UDR compares models: need at least 2, got {len(codes)}")
    if any(z.ndim != 2 or len(z) != len(codes[0]) for z in codes):
        raise ValueError("codes must be 2-D arrays with one row per image, the same images for "
                         f"every model; got shapes {[z.shape for z in codes]}")
    if kls is None:
        keep = [np.ones(z.shape[1], dtype=bool) for z in codes]
    else:
        if len(kls) != len(codes) or any(np.shape(k) != (z.shape[1],) for k, z in zip(kls, codes)):
            raise ValueError("kls must hold one (d,) array per model")
        keep = [np.asarray(k) > kl_threshold for k in kls]
    # Standardised over all latents, then the uninformative ones dropped (disentanglement_lib
    # zeroes them, which leaves them out of Lasso's fit and of every row and column).
    z = [_standardise(c)[:, m] for c, m in zip(codes, keep)]
    similarity = spearman_matrix if method == "spearman" else (
        lambda za, zb: lasso_matrix(za, zb, alpha))
    n = len(z)
    pairwise = [[None if a == b else udr_pair(similarity(z[a], z[b])) for b in range(n)]
                for a in range(n)]
    scores = [float(np.median([pairwise[a][i] for a in range(n) if a != i])) for i in range(n)]
    return {"udr": scores, "pairwise": pairwise,
            "num_informative": [int(m.sum()) for m in keep], "method": method}


def udr_table(result, names=None):
    """udr()'s result as text: each model's UDR and informative latents, then the pairwise
    scores (row a, column b: b's latents compared with a's)."""
    n = len(result["udr"])
    names = [str(s) for s in names] if names is not None else [f"model {i}" for i in range(n)]
    width = max(8, *(len(s) for s in names))
    lines = [f"UDR ({result['method']}), median over the other {n - 1} model(s)",
             f"{'model':{width}s} {'UDR':>6s}  informative latents"]
    lines += [f"{name:{width}s} {score:6.3f}  {k}"
              for name, score, k in zip(names, result["udr"], result["num_informative"])]
    lines += ["", "pairwise (row a, column b):",
              " " * width + "".join(f" {i:>6d}" for i in range(n))]
    lines += [f"{name:{width}s}" + "".join("      -" if s is None else f" {s:6.3f}" for s in row)
              for name, row in zip(names, result["pairwise"])]
    return "\n".join(lines)
