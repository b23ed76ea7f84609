"""Tests of evaluate.py: disentanglement_lib's sanity checks on representations built from the
ground-truth factors (no model), then the command line on a two-step checkpoint.

    python -m pytest -q test_evaluate.py
"""
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dataset
import evaluate
import train
from model import BetaVAE
from checkpoint import CheckpointError
from cli import UserError
from conftest import save_model
from dataset import FACTOR_NAMES, FACTOR_SIZES, NUM_IMAGES

# A tenth of the full protocol's β-VAE and FactorVAE points; MIG and the variance estimate
# keep 10,000.
SMALL = dict(n_beta_train=1000, n_beta_eval=500, n_fvae_train=1000, n_fvae_eval=500,
             n_dci_train=200, n_dci_test=100, n_sap_train=200, n_sap_test=100)


def scores(codes, seed=0):
    """evaluate.score on a SMALL plan: all five scores."""
    return evaluate.score(codes, evaluate.plan(np.random.default_rng(seed), **SMALL))


def light_scores(codes, seed=0):
    """The β-VAE and FactorVAE scores and MIG on a SMALL plan, as evaluate.score computes them,
    for tests that check nothing else: DCI's boosted trees cost seconds a call (test_scores.py
    tests DCI and SAP; test_ground_truth_scores_high, all five through evaluate.score)."""
    p = evaluate.plan(np.random.default_rng(seed), **SMALL)
    return {"beta_vae": evaluate.beta_vae_score(codes, p["beta_train"], p["beta_eval"]),
            "factor_vae": evaluate.factor_vae_score(codes, p["variance"], p["fvae_train"],
                                                    p["fvae_eval"]),
            **evaluate.mig(codes, p["mig"])}


@pytest.fixture(scope="module")
def factors():
    """(NUM_IMAGES, 5) factor classes of every image."""
    return dataset.index_to_factors(torch.arange(NUM_IMAGES)).numpy()


@pytest.fixture(scope="module")
def identity(factors):
    """Latents = the factors, scaled to [0, 1)."""
    return (factors / np.array(FACTOR_SIZES)).astype(np.float32)


@pytest.fixture(scope="module")
def mixed(identity):
    """A middling representation: noisy factors, posX and posY entangled, one noise latent."""
    noise = np.random.default_rng(1).standard_normal((NUM_IMAGES, 6)).astype(np.float32)
    x, y = identity[:, 3], identity[:, 4]
    return np.column_stack([identity[:, :3] + 0.05 * noise[:, :3], x + y, x - y, noise[:, 5]])


def test_plan_holds_the_chosen_factor_fixed():
    p = evaluate.plan(np.random.default_rng(0), 50, 10, 50, 10, 100, 100, batch=64)
    k, pairs = p["beta_train"]
    f = dataset.index_to_factors(torch.from_numpy(pairs)).numpy()  # n, 2, 64, 5
    same = f[:, 0] == f[:, 1]
    assert same[np.arange(50), :, k].all() and not same.all()
    k, batches = p["fvae_train"]
    f = dataset.index_to_factors(torch.from_numpy(batches)).numpy()  # n, 64, 5
    assert (f[np.arange(50), :, k] == f[np.arange(50), :1, k]).all()
    assert set(k.tolist()) == set(range(len(FACTOR_NAMES)))
    assert p["mig"].shape == (100,) and 0 <= p["mig"].min() and p["mig"].max() < NUM_IMAGES


def test_ground_truth_scores_high(identity):
    r = scores(identity)
    assert r["mig"] >= 0.85  # 20 bins cap orientation and position near 0.8
    assert r["factor_vae"]["eval_accuracy"] >= 0.95
    assert r["beta_vae"]["eval_accuracy"] >= 0.9
    mi = np.array(r["mi"])
    assert mi.shape == (5, 5) and (mi.argmax(axis=1) == np.arange(5)).all()


@pytest.mark.parametrize("kind", ["zeros", "noise"])
def test_uninformative_latents_score_low(kind):
    shape = (NUM_IMAGES, 10)
    codes = (np.zeros(shape, np.float32) if kind == "zeros" else
             np.random.default_rng(2).standard_normal(shape).astype(np.float32))
    r = light_scores(codes)
    assert r["mig"] <= 0.05
    assert r["factor_vae"]["eval_accuracy"] <= 0.35  # chance: 0.2
    assert r["beta_vae"]["eval_accuracy"] <= 0.35
    if kind == "zeros":  # every latent pruned: 0, as disentanglement_lib
        assert r["factor_vae"] == {"train_accuracy": 0.0, "eval_accuracy": 0.0,
                                   "num_active_dims": 0}


def test_duplicated_factor_lowers_mig(identity):
    base = light_scores(identity)
    dup = light_scores(np.column_stack([identity, identity[:, 3]]))  # posX twice
    assert dup["mig_per_factor"]["posX"] < 0.01
    assert dup["mig"] < base["mig"] - 0.1


def test_mig_known_answer_for_a_latent_equal_to_a_factor(factors):
    """A latent equal to scale's class has normalised MI 1 with it; MIG = 1 - the runner-up."""
    noise = np.random.default_rng(4).standard_normal((NUM_IMAGES, 3))
    # scale's 6 classes fall in 6 distinct of the 20 bins, so I(z0; scale) = H(scale) exactly.
    codes = np.column_stack([factors[:, 1], noise]).astype(np.float32)
    r = evaluate.mig(codes, evaluate.plan(np.random.default_rng(0), **SMALL)["mig"])
    column = np.array(r["mi"])[:, 1]
    assert column[0] == pytest.approx(1.0, abs=1e-6)
    assert 0 <= column[1:].max() < 0.01
    assert r["mig_per_factor"]["scale"] == pytest.approx(1 - column[1:].max(), abs=1e-9)


def test_factor_vae_votes_on_normalised_variance(identity):
    """Noisy identity latents rescaled by very different constants keep FactorVAE accuracy."""
    noise = np.random.default_rng(5).standard_normal(identity.shape)
    # 0.25 and 0.5 keep every global std above PRUNE_STD; 100 and 10 dwarf their local noise.
    codes = ((identity + 0.05 * noise) * np.array([1, 100, 0.25, 10, 0.5])).astype(np.float32)
    r = scores(codes)["factor_vae"]
    assert r["num_active_dims"] == 5
    assert r["eval_accuracy"] >= 0.95


def test_permuting_latents_leaves_scores_unchanged(mixed):
    perm = np.random.default_rng(3).permutation(mixed.shape[1])
    a, b = light_scores(mixed), light_scores(mixed[:, perm])
    assert 0.3 < a["mig"] < 0.8  # a representation where the test means something
    for key in ("beta_vae", "factor_vae", "mig_per_factor", "entropy"):
        assert b[key] == pytest.approx(a[key], abs=1e-9), key
    assert np.allclose(np.array(b["mi"]), np.array(a["mi"])[perm])


def test_same_seed_same_numbers(mixed):
    assert light_scores(mixed, seed=5) == light_scores(mixed, seed=5)
    assert light_scores(mixed, seed=5)["mi"] != light_scores(mixed, seed=6)["mi"]


def test_evaluate_model_is_reproducible_and_restores_mode(tiny_protocol):
    torch.manual_seed(0)
    model = BetaVAE(latent_dim=4).train()
    data = dataset.DSprites(None)
    state = torch.get_rng_state()
    a = evaluate.evaluate_model(model, data, seed=1, sample=True, **tiny_protocol)
    assert model.training and torch.equal(state, torch.get_rng_state())
    b = evaluate.evaluate_model(model, data, seed=1, sample=True, **tiny_protocol)
    for r in (a, b):
        r.pop("seconds")
    assert a == b
    assert np.array(a["mi"]).shape == (4, 5) and len(a["kl_per_dim"]) == 4
    assert a["representation"] == "sample" and a["counts"]["n_mig"] == 400


def test_encode_matches_the_model_and_leaves_it_untouched():
    """encode's channels-last copy gives the model's own codes (default layout, to float
    rounding) and changes neither the caller's weights nor their layout."""
    torch.manual_seed(0)
    model = BetaVAE(latent_dim=4).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data, index = dataset.DSprites(None), np.array([5, 70_000, 300_001, 737_279])
    mu, logvar = evaluate.encode(model, data, index, batch_size=3)
    with torch.no_grad():
        ref_mu, ref_logvar = model.encode(dataset.as_input(data.images(torch.from_numpy(index))))
    np.testing.assert_allclose(mu, ref_mu.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logvar, ref_logvar.numpy(), rtol=1e-5, atol=1e-6)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]) and v.is_contiguous(), k


def test_evaluate_seeds_matches_each_seed_alone(tiny_protocol):
    """evaluate_seeds([0, 1]) encodes the union once and scores each seed as evaluated alone."""
    torch.manual_seed(0)
    model = BetaVAE(latent_dim=4)
    data = dataset.DSprites(None)
    totals = set()
    both = evaluate.evaluate_seeds(model, data, [0, 1], sample=True,
                                   log=lambda done, total: totals.add(total), **tiny_protocol)
    (total,) = totals  # one encoding pass
    assert max(r["images_encoded"] for r in both) < total < sum(r["images_encoded"] for r in both)
    for seed, r in zip([0, 1], both):
        alone = evaluate.evaluate_model(model, data, seed=seed, sample=True, **tiny_protocol)
        assert r["seed"] == seed and r["images_encoded"] == alone["images_encoded"]
        for key, exact in (("beta_vae", "converged"), ("factor_vae", "num_active_dims")):
            assert r[key][exact] == alone[key][exact], (seed, key)
            for acc in ("train_accuracy", "eval_accuracy"):
                assert r[key][acc] == pytest.approx(alone[key][acc], abs=1e-5), (seed, key, acc)
        assert r["mig"] == pytest.approx(alone["mig"], abs=1e-5)
        assert np.array(r["mi"]) == pytest.approx(np.array(alone["mi"]), abs=1e-5)
    assert both[0]["mi"] != both[1]["mi"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A two-step run of train.py (rendered data), its signal handlers put back afterwards."""
    out = tmp_path_factory.mktemp("run")
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert train.main(["--max-steps", "2", "--epochs", "1", "--out", str(out),
                           "--log-every", "1", "--batch-size", "8"]) == 0
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    return out / "ckpt.pt"


def test_cli_writes_metrics_and_figure(checkpoint, capsys, tiny_protocol):
    """--quick writes metrics_quick.json and its figure, leaving a full run's metrics.json alone."""
    full = checkpoint.parent / "metrics.json"
    full.write_text('{"full": true}')
    (checkpoint.parent / "latent_factor_mi.png").unlink(missing_ok=True)
    assert evaluate.main([str(checkpoint), "--quick", "--device", "cpu", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert "β-VAE score" in printed and "MIG" in printed
    assert full.read_text() == '{"full": true}'
    assert not (checkpoint.parent / "latent_factor_mi.png").exists()
    metrics = json.loads((checkpoint.parent / "metrics_quick.json").read_text())
    for key in ("beta_vae", "factor_vae", "mig", "mig_no_shape", "mi", "kl_per_dim", "seed",
                "counts", "step", "representation", "data", "seconds", "images_encoded"):
        assert key in metrics, key
    assert metrics["step"] == 2 and metrics["seed"] == 3 and metrics["quick"]
    assert metrics["data"] in ("rendered", str(dataset.DEFAULT_PATH))
    assert metrics["counts"] == tiny_protocol
    assert np.array(metrics["mi"]).shape == (10, 5)
    for value in (metrics["mig"], metrics["beta_vae"]["eval_accuracy"],
                  metrics["factor_vae"]["eval_accuracy"]):
        assert 0 <= value <= 1
    assert (checkpoint.parent / "latent_factor_mi_quick.png").stat().st_size > 1000
    assert (checkpoint.parent / "dci_importance_quick.png").stat().st_size > 1000
    assert np.array(metrics["dci"]["importance"]).shape == (10, 5)
    assert 0 <= metrics["sap"]["sap"] <= 1


def test_cli_several_seeds_writes_mean_and_std(checkpoint, capsys, tiny_protocol):
    """--seed 0 1 2: by_seed has 3 results, mean_std their mean and std, the table a std column."""
    assert evaluate.main([str(checkpoint), "--device", "cpu", "--seed", "0", "1", "2"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((checkpoint.parent / "metrics.json").read_text())
    by_seed, mean_std = metrics["by_seed"], metrics["mean_std"]
    assert [r["seed"] for r in by_seed] == [0, 1, 2] and metrics["seed"] == 0
    assert by_seed[0]["mig"] == metrics["mig"]
    assert set(mean_std) == set(evaluate.SCORES)
    for name, (mean, std) in mean_std.items():
        values = [r[name] for r in by_seed]
        assert (mean, std) == pytest.approx((np.mean(values), np.std(values)), abs=1e-12), name
    assert any(std > 0 for _, std in mean_std.values())  # the seeds did differ
    header = next(line for line in printed.splitlines() if line.startswith("score"))
    assert header.split() == ["score", "train", "eval", "std"]
    mig_row = next(line for line in printed.splitlines() if line.startswith("MIG (Chen"))
    assert mig_row.split()[-2:] == [f"{mean_std['mig'][0]:.3f}", f"{mean_std['mig'][1]:.3f}"]


def test_user_errors(tmp_path):
    broken = tmp_path / "ckpt.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        evaluate.main([str(broken)])
    with pytest.raises(UserError, match="--batch-size"):
        evaluate.main([str(broken), "--batch-size", "0"])
    with pytest.raises(UserError, match="argument --device: invalid choice: 'tpu'"):
        evaluate.main([str(broken), "--device", "tpu"])
    missing = tmp_path / "nowhere" / "ckpt.pt"
    run = subprocess.run([sys.executable, "evaluate.py", str(missing)], capture_output=True,
                         text=True, cwd=Path(__file__).parent)
    assert run.returncode == 1
    assert run.stderr == f"evaluate.py: error: no checkpoint at {missing}\n"


def encoder_run(folder, seed, perm=None, signs=None):
    """A run folder holding an untrained BetaVAE whose means are stretched (every latent well
    above UDR's 0.01-nat mask); perm and signs reorder and flip the latents of seed's model."""
    torch.manual_seed(seed)
    model = BetaVAE()
    last = model.encoder[-1]  # Linear(256, 2 * 10): mu, then logvar
    with torch.no_grad():
        last.weight[:10] *= 30
        if perm is not None:
            order = torch.cat([torch.tensor(perm), 10 + torch.tensor(perm)])
            last.weight.copy_(last.weight[order])
            last.bias.copy_(last.bias[order])
            last.weight[:10] *= torch.tensor(signs, dtype=torch.float32)[:, None]
            last.bias[:10] *= torch.tensor(signs, dtype=torch.float32)
    return str(save_model(folder, model))


def test_udr_of_a_permuted_twin_equals_that_of_a_copy_and_beats_another_seed(tmp_path, capsys):
    """--udr on four runs: b is a with its latents permuted and sign-flipped, c another seed, d
    a copy of a. UDR cannot tell b from d (the same latents, reordered and flipped; scores.py's
    tests show both reach 1 where latents are uncorrelated), and c scores lower."""
    rng = np.random.default_rng(0)
    perm, signs = rng.permutation(10).tolist(), rng.choice([-1, 1], 10).tolist()
    runs = [encoder_run(tmp_path / "a", 0), encoder_run(tmp_path / "b", 0, perm, signs),
            encoder_run(tmp_path / "c", 1), encoder_run(tmp_path / "d", 0)]
    assert evaluate.main(["--udr", *runs, "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    for block in printed.split("UDR (")[1:]:  # Spearman, then Lasso
        table = block.split("pairwise (row a, column b):")[1].splitlines()[2:6]
        a_row = [float(v) for v in table[0].split()[2:]]  # a against b, c, d
        assert a_row[0] == pytest.approx(a_row[2], abs=1e-3) and a_row[1] < a_row[0] - 0.1, block
    with pytest.raises(UserError, match="--udr compares runs: give two or more"):
        evaluate.main(["--udr", runs[0]])
    for ignored in (["--seed", "0", "1"], ["--quick"], ["--sample"]):
        with pytest.raises(UserError, match="--udr encodes 1,000 images of one --seed"):
            evaluate.main(["--udr", *runs[:2], *ignored])
    with pytest.raises(UserError, match="--udr: a run is given twice"):
        evaluate.main(["--udr", runs[0], str(Path(runs[0]) / "ckpt.pt")])
    with pytest.raises(UserError, match="give one checkpoint, or --udr"):
        evaluate.main(runs[:2])


def test_orientation_mi_within_shape_known_answers():
    """On discrete codes: a latent equal to orientation has MI 1 with it within every shape, as
    does one coding (shape, orientation) together; a latent equal to shape has 0 (it says nothing
    once the shape is known), though its plain orientation MI is 0 too; noise has about 0. With
    one shape only, it is plain normalised MI."""
    rng = np.random.default_rng(0)
    v = evaluate._factors(rng.integers(NUM_IMAGES, size=20_000))
    shape, orientation = v[:, 0], v[:, 2]
    noise = rng.integers(20, size=len(v))
    z = np.column_stack([orientation, shape, 40 * shape + orientation, noise])
    within = evaluate.mi_within(z, v, "orientation", "shape")
    assert within[:3] == pytest.approx([1.0, 0.0, 1.0], abs=1e-9)
    assert 0 < within[3] < 0.02
    hearts = shape == 2
    from sklearn.metrics import mutual_info_score
    plain = mutual_info_score(orientation[hearts], z[hearts, 3]) / mutual_info_score(
        orientation[hearts], orientation[hearts])
    within_hearts = evaluate.mi_within(z[hearts], v[hearts], "orientation", "shape")
    assert within_hearts[3] == pytest.approx(plain)


def test_a_circle_model_is_scored_on_its_mean_angle(tmp_path, capsys, tiny_protocol):
    """A circle latent's code is its mean angle (what encode returns in eval mode), its KL the
    Power Spherical one; metrics.json holds every latent's orientation MI within shape. --sample
    is refused in one line: a circle has no Gaussian noise."""
    torch.manual_seed(0)
    model = BetaVAE(circles=2)
    folder = save_model(tmp_path / "circle", model)
    data = dataset.load(None)
    index = np.arange(0, NUM_IMAGES, 7919)
    _, mu, logvar = evaluate.encode_eval(model, data, index)
    with torch.no_grad():
        angle = model.eval().encode(dataset.as_input(data.images(torch.from_numpy(index))))[0]
    np.testing.assert_allclose(mu, angle.numpy(), atol=1e-5)
    assert np.abs(mu[:, :2]).max() <= np.pi
    kl = evaluate.mean_kl(index, mu, logvar, index, circles=2)
    from loss import power_spherical_kl
    assert kl[0] == pytest.approx(power_spherical_kl(torch.from_numpy(logvar[:, 0])).mean().item(),
                                  rel=1e-5)
    assert evaluate.main([str(folder), "--quick"]) == 0
    metrics = json.loads((folder / "metrics_quick.json").read_text())
    assert len(metrics["orientation_mi_within_shape"]) == 10
    with pytest.raises(UserError, match="--sample draws Gaussian noise; this model has circle"):
        evaluate.main([str(folder), "--sample"])
