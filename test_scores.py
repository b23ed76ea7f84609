"""Tests of scores.py: known answers of DCI, SAP and UDR on made-up codes (no model, no images).

    python -m pytest -q test_scores.py
"""
import math

import numpy as np
import pytest

import scores

# Few classes and few points: the boosted trees fit one tree per class per round.
SIZES = (3, 6, 4)


def classes(rng, n, sizes=SIZES):
    """(n, K) factor classes, each factor uniform over its classes."""
    return np.stack([rng.integers(s, size=n) for s in sizes], axis=1)


def identity_codes(rng, v, sizes=SIZES, extra=2):
    """Latent k = factor k scaled to [0, 1) plus a little noise, then `extra` noise latents."""
    z = v / np.array(sizes) + 0.01 * rng.standard_normal(v.shape)
    return np.column_stack([z, rng.standard_normal((len(v), extra))])


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng, classes(rng, 600), classes(rng, 300)


@pytest.fixture(scope="module")
def noise_dci(data):
    rng, v_train, v_test = data
    z_train, z_test = rng.standard_normal((600, 5)), rng.standard_normal((300, 5))
    return (z_train, v_train, z_test, v_test), scores.dci(z_train, v_train, z_test, v_test,
                                                          n_jobs=1)


# ---------------------------------------------------------------- DCI

def entropy(p, base):
    """By hand: -sum p log p in `base`, 0 log 0 = 0."""
    return -sum(x * math.log(x) for x in p if x > 0) / math.log(base)


def test_dci_of_a_hand_made_importance_matrix():
    r = np.array([[1.0, 0.0, 0.0],    # only factor 0
                  [0.0, 0.5, 0.5],    # factors 1 and 2 alike
                  [0.0, 0.5, 0.25],   # 2/3 factor 1, 1/3 factor 2
                  [0.0, 0.0, 0.25],   # only factor 2
                  [0.0, 0.0, 0.0]])   # used by no classifier
    total = 3.0  # every column sums to 1, as feature_importances_ do
    d = (1.0 / total * (1 - entropy([1], 3)) + 1.0 / total * (1 - entropy([0.5, 0.5], 3))
         + 0.75 / total * (1 - entropy([2 / 3, 1 / 3], 3)) + 0.25 / total * 1)
    c = np.mean([1 - entropy([1], 5), 1 - entropy([0.5, 0.5], 5),
                 1 - entropy([0.5, 0.25, 0.25], 5)])
    out = scores.dci_from_importance(r)
    assert out["disentanglement"] == pytest.approx(d, abs=1e-12)
    assert out["disentanglement"] == pytest.approx(0.644845, abs=1e-6)
    assert out["completeness"] == pytest.approx(c, abs=1e-12)
    assert out["completeness"] == pytest.approx(0.641102, abs=1e-6)
    assert out["disentanglement_per_latent"] == pytest.approx(
        [1, 1 - math.log(2) / math.log(3), 1 - entropy([2 / 3, 1 / 3], 3), 1, 0], abs=1e-12)
    # Scaling R changes nothing: only proportions count.
    assert scores.dci_from_importance(7 * r)["disentanglement"] == pytest.approx(d, abs=1e-12)


def test_dci_zero_rows_and_columns_as_disentanglement_lib():
    # A factor no latent serves weighs 0 in completeness; a latent no factor uses, in D.
    missed = scores.dci_from_importance(np.diag([5.0] * 5)[:2])  # 2 latents, 5 factors
    assert missed["disentanglement"] == pytest.approx(1.0)
    assert missed["completeness"] == pytest.approx(1.0)
    empty_code = scores.dci_from_importance([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    assert empty_code["disentanglement"] == pytest.approx(1.0)
    assert empty_code["completeness"] == pytest.approx(1.0)
    assert empty_code["disentanglement_per_latent"][2] == 0.0
    zero = scores.dci_from_importance(np.zeros((10, 5)))
    assert zero["disentanglement"] == 0.0 and zero["completeness"] == 0.0
    # Each factor split over two latents: completeness 1 - log 2 / log 10.
    redundant = scores.dci_from_importance(np.vstack([np.eye(5), np.eye(5)]))
    assert redundant["completeness"] == pytest.approx(1 - math.log(2) / math.log(10))
    assert redundant["disentanglement"] == pytest.approx(1.0)


def test_dci_of_the_factors_themselves_is_one(data):
    rng, v_train, v_test = data
    out = scores.dci(identity_codes(rng, v_train), v_train, identity_codes(rng, v_test), v_test,
                     n_jobs=1)
    assert out["disentanglement"] >= 0.95 and out["completeness"] >= 0.95
    assert out["informativeness"] >= 0.95 and out["informativeness_train"] >= 0.95
    importance = np.array(out["importance"])
    assert importance.shape == (5, 3)
    # Factor k's classifier relies on latent k; the noise latents are never used.
    assert (importance.argmax(axis=0) == np.arange(3)).all()
    assert importance[3:].sum() < 0.01
    assert len(out["informativeness_per_factor"]) == 3


def test_dci_of_noise_is_zero(noise_dci):
    _, out = noise_dci
    assert out["disentanglement"] < 0.05 and out["completeness"] < 0.05
    assert out["informativeness"] < 0.45  # chance: about 0.26 over classes 3, 6 and 4


def test_dci_does_not_depend_on_n_jobs(noise_dci):
    args, one = noise_dci
    assert scores.dci(*args, n_jobs=2) == one


# ---------------------------------------------------------------- SAP

def test_sap_of_the_factors_themselves_is_the_maximum():
    # Two- and three-class factors: a one-latent linear SVM can tell every class apart, so the
    # true latent scores 1 and any other latent chance (1 / classes): the largest gap possible.
    rng, sizes = np.random.default_rng(1), (2, 3, 3, 2)
    v_train, v_test = classes(rng, 2000, sizes), classes(rng, 1000, sizes)
    codes = lambda v: np.column_stack(  # noqa: E731  the class index, as disentanglement_lib
        [v + 0.05 * rng.standard_normal(v.shape), rng.standard_normal((len(v), 2))])
    out = scores.sap(codes(v_train), v_train, codes(v_test), v_test)
    maximum = np.mean([1 - 1 / s for s in sizes])  # 0.583
    assert out["sap"] == pytest.approx(maximum, abs=0.05)
    m = np.array(out["score_matrix"])
    assert m.shape == (6, 4) and (m.argmax(axis=0) == np.arange(4)).all()
    assert np.diag(m) == pytest.approx(1.0, abs=0.02)
    assert np.array(out["sap_per_factor"]) == pytest.approx(1 - 1 / np.array(sizes), abs=0.06)
    assert out["converged"]


def test_sap_of_noise_is_zero():
    rng = np.random.default_rng(2)
    v_train, v_test = classes(rng, 2000), classes(rng, 1000)
    out = scores.sap(rng.standard_normal((2000, 6)), v_train, rng.standard_normal((1000, 6)),
                     v_test)
    assert 0 <= out["sap"] < 0.03


def test_sap_scores_a_constant_latent_as_the_most_frequent_class():
    v_train = np.array([[0], [1], [1], [2], [1], [0]])
    v_test = np.array([[1], [1], [0], [2]])
    z_train = np.column_stack([np.full(6, 0.3), v_train[:, 0] * 1.0])
    z_test = np.column_stack([np.full(4, 0.3), v_test[:, 0] * 1.0])
    out = scores.sap(z_train, v_train, z_test, v_test)
    assert out["score_matrix"][0] == [0.5]  # class 1, the most frequent, is half the test set


# ---------------------------------------------------------------- UDR

def grid(levels=6, d=4):
    """Every combination of `levels` values of d latents (levels**d rows, shuffled): the
    latents are exactly uncorrelated, in value and in rank."""
    g = np.stack(np.meshgrid(*[np.arange(levels)] * d, indexing="ij"), axis=-1).reshape(-1, d)
    return np.random.default_rng(3).permutation(g - (levels - 1) / 2).astype(np.float64)


def twin(z, seed=4):
    """z's latents permuted, sign-flipped and rescaled: the same representation."""
    rng = np.random.default_rng(seed)
    perm, sign = rng.permutation(z.shape[1]), np.array([1, -1, -1, 1, -1, 1, 1, -1][:z.shape[1]])
    return z[:, perm] * sign * rng.uniform(0.5, 3, z.shape[1]), perm


def test_udr_pair_of_hand_made_matrices():
    assert scores.udr_pair(np.eye(3)) == 1.0
    assert scores.udr_pair(0.9 * np.eye(3)) == pytest.approx(0.9)  # max^2 / sum: not scale-free
    # Columns 1/2, 1/2, 1 and rows the same, over d_a + d_b = 6.
    assert scores.udr_pair([[1, 1, 0], [1, 1, 0], [0, 0, 1]]) == pytest.approx(4 / 6)
    assert scores.udr_pair(np.ones((3, 3))) == pytest.approx(1 / 3)
    assert scores.udr_pair(np.zeros((3, 3))) == 0.0
    # d_a = 2, d_b = 3, b's third latent like nothing of a: (2 + 3 - 1) / (2 + 3) = 0.8, not
    # disentanglement_lib's (2/3 + 1) / 2.
    assert scores.udr_pair([[0, 1, 0], [1, 0, 0]]) == pytest.approx(0.8)
    assert scores.udr_pair([[0.6, 0.2], [0.0, 0.0]]) == pytest.approx(
        (0.36 / 0.6 + 0.04 / 0.2 + 0.36 / 0.8 + 0) / 4)


@pytest.mark.parametrize("method, best", [("spearman", 1.0), ("lasso", 1 - 0.1)])
def test_udr_of_a_permuted_twin_is_the_maximum(method, best):
    # Lasso(alpha=0.1) on standardised latents weighs an exact copy 1 - alpha: its maximum.
    a = grid()
    b, _ = twin(a)
    kl = [np.ones(4), np.ones(4)]
    out = scores.udr([a, b], kl, method=method)
    assert out["udr"] == pytest.approx([best, best], abs=1e-3)
    assert out["pairwise"][0][1] == pytest.approx(best, abs=1e-3) and out["pairwise"][0][0] is None
    assert out["num_informative"] == [4, 4]


@pytest.mark.parametrize("method", ["spearman", "lasso"])
def test_udr_of_unrelated_models_is_near_zero(method):
    a = grid()
    c = np.random.default_rng(5).standard_normal(a.shape)
    out = scores.udr([a, c], [np.ones(4), np.ones(4)], method=method)
    assert max(out["udr"]) < 0.1


@pytest.mark.parametrize("method, best", [("spearman", 1.0), ("lasso", 1 - 0.1)])
def test_udr_leaves_collapsed_latents_out(method, best):
    # Both models: the 4 grid latents (KL 1) and 3 collapsed latents of small noise (KL <= 0.01).
    rng = np.random.default_rng(6)
    a = grid()
    b, _ = twin(a)
    noise = lambda: 0.01 * rng.standard_normal((len(a), 3))  # noqa: E731
    za, zb = np.column_stack([noise()[:, :1], a, noise()[:, :2]]), np.column_stack([b, noise()])
    kla = np.array([0.01, 1, 1, 1, 1, 0.001, 0.0])
    klb = np.array([1, 1, 1, 1, 0.005, 0.01, 0.002])
    masked = scores.udr([za, zb], [kla, klb], method=method)
    assert masked["udr"] == pytest.approx([best, best], abs=1e-3)
    assert masked["num_informative"] == [4, 4]
    for unmasked in (scores.udr([za, zb], None, method=method),
                     scores.udr([za, zb], [kla, klb], method=method, kl_threshold=-1)):
        assert max(unmasked["udr"]) < 0.7 * best
        assert unmasked["num_informative"] == [7, 7]


def test_udr_is_the_median_over_the_other_models():
    a = grid()
    b, c = twin(a, seed=7)[0], twin(a, seed=8)[0]
    noise = np.random.default_rng(9).standard_normal(a.shape)
    out = scores.udr([a, b, c, noise], [np.ones(4)] * 4)
    pairwise = np.array(out["pairwise"], dtype=float)
    assert pairwise[:3, :3][~np.eye(3, dtype=bool)] == pytest.approx(1.0)
    assert out["udr"][:3] == pytest.approx([1.0] * 3)  # median of 1, 1 and ~0
    assert out["udr"][3] < 0.1
    text = scores.udr_table(out, ["seed0", "seed1", "seed2", "noise"])
    assert "seed2     1.000  4" in text and "noise" in text and "      -" in text


def test_udr_lasso_scores_each_model_as_the_regression_target():
    # b = (x, x + y) against a = (x, y): Lasso's matrix is not symmetric, and model i's UDR
    # reads the pairs where i's latents are regressed (pairwise[a][i]), as disentanglement_lib.
    x, y = np.random.default_rng(10).standard_normal((2, 1000))
    a, b = np.column_stack([x, y]), np.column_stack([x, x + y])
    out = scores.udr([a, b], method="lasso")
    assert abs(out["pairwise"][0][1] - out["pairwise"][1][0]) > 0.1
    assert out["udr"] == [out["pairwise"][1][0], out["pairwise"][0][1]]
    r = scores.lasso_matrix(scores._standardise(a), scores._standardise(b))
    assert r[:, 0] == pytest.approx([0.9, 0.0], abs=1e-3)  # b's x: a's x alone, shrunk by 0.1
    assert out["pairwise"][0][1] == scores.udr_pair(r)


def test_udr_rejects_bad_input():
    a = grid()
    with pytest.raises(ValueError, match="at least 2"):
        scores.udr([a])
    with pytest.raises(ValueError, match="method"):
        scores.udr([a, a], method="pearson")
    with pytest.raises(ValueError, match="same images"):
        scores.udr([a, a[:10]])
