"""The ELBO parts against independent references."""
import itertools
import math

import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from loss import (beta_vae_loss, kl_per_dim, linear_ramp, mss_log_weights, power_spherical_kl,
                  reconstruction_loss, tc_parts)


def test_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = 3 * torch.randn(64, 10), 2 * torch.randn(64, 10)
    ref = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).mean(0)
    torch.testing.assert_close(kl_per_dim(mu, logvar), ref, rtol=1e-5, atol=1e-5)
    assert kl_per_dim(torch.zeros(4, 3), torch.zeros(4, 3)).abs().max() == 0


def test_reconstruction_is_bernoulli_nll_summed_over_pixels():
    torch.manual_seed(1)
    logits = torch.randn(8, 1, 64, 64)
    x = (torch.rand(8, 1, 64, 64) > 0.7).float()
    ref = -Bernoulli(logits=logits).log_prob(x).sum((1, 2, 3)).mean()
    torch.testing.assert_close(reconstruction_loss(logits, x), ref)


def test_objectives_combine_the_parts():
    torch.manual_seed(2)
    logits, x = torch.randn(4, 1, 64, 64), torch.ones(4, 1, 64, 64)
    mu, logvar = torch.randn(4, 10), torch.randn(4, 10)
    h = beta_vae_loss(logits, x, mu, logvar, "H", beta=4.0)
    assert h["kl_per_dim"].shape == (10,)
    torch.testing.assert_close(h["kl"], h["kl_per_dim"].sum())
    torch.testing.assert_close(h["loss"], h["recon"] + 4.0 * h["kl"])
    b = beta_vae_loss(logits, x, mu, logvar, "B", gamma=1000.0, c=5.0)
    torch.testing.assert_close(b["loss"], b["recon"] + 1000.0 * (b["kl"] - 5.0).abs())
    f = beta_vae_loss(logits, x, mu, logvar, "F", gamma=35.0, tc=torch.tensor(0.25))
    torch.testing.assert_close(f["loss"], f["recon"] + f["kl"] + 35.0 * 0.25)
    assert f["tc"] == 0.25
    with pytest.raises(ValueError, match="objective 'F' needs tc"):
        beta_vae_loss(logits, x, mu, logvar, "F", gamma=35.0)
    for objective in ("B", "F"):  # no silent γ: B's 1000 would be 30 times F's
        with pytest.raises(ValueError, match=f"objective '{objective}' needs gamma"):
            beta_vae_loss(logits, x, mu, logvar, objective, tc=torch.tensor(0.25))
    with pytest.raises(ValueError, match="choose from 'H', 'B', 'TC', 'F'"):
        beta_vae_loss(logits, x, mu, logvar, "C")


def test_linear_ramp_rises_then_holds():
    assert linear_ramp(0, 25, 100) == 0
    assert linear_ramp(50, 25, 100) == 12.5
    assert linear_ramp(100, 25, 100) == linear_ramp(10_000, 25, 100) == 25
    assert linear_ramp(0, 4.0, 0) == 4.0  # no ramp: the final value from the start


# ---------------------------------------------------------------- β-TCVAE (objective "TC")

def posterior(mu, logvar):
    """The diagonal Gaussian posteriors as torch.distributions, the tests' reference densities."""
    return Independent(Normal(mu, (0.5 * logvar).exp()), 1)


def exact_log_qz(z, mu, logvar):
    """log q(z) = log 1/N Σ_n q(z|x_n) over a whole (small) dataset, and per dimension log q(z_j),
    for each row of z: (K,) and (K, d)."""
    n = mu.shape[0]
    per_dim = Normal(mu, (0.5 * logvar).exp()).log_prob(z.unsqueeze(1))  # K, N, d
    return (torch.logsumexp(per_dim.sum(2), 1) - math.log(n),
            torch.logsumexp(per_dim, 1) - math.log(n))


def small_dataset(n, d, seed):
    """n "images" in float64, each with its own posterior N(mu_n, sigma_n^2) in d dimensions,
    spread so that they overlap partly; z_n one draw of each."""
    g = torch.Generator().manual_seed(seed)
    mu = 1.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
    logvar = 0.8 * torch.randn(n, d, generator=g, dtype=torch.float64)
    z = mu + (0.5 * logvar).exp() * torch.randn(n, d, generator=g, dtype=torch.float64)
    return z, mu, logvar


def test_tc_parts_sum_to_log_posterior_over_prior():
    # mi + tc + dw_kl telescopes to log q(z|x) - log p(z) for the sampled z, whatever q(z) is.
    torch.manual_seed(3)
    mu, logvar = torch.randn(32, 6), torch.randn(32, 6)
    z = posterior(mu, logvar).sample()
    t = tc_parts(z, mu, logvar, dataset_size=1000)
    ref = posterior(mu, logvar).log_prob(z) - Independent(Normal(0.0, torch.ones(6)), 1).log_prob(z)
    torch.testing.assert_close(t["log_qz_x"], posterior(mu, logvar).log_prob(z))
    torch.testing.assert_close(t["log_qz_x"] - t["log_pz"], ref)  # per sample
    torch.testing.assert_close(t["log_prod_qzj"], t["log_qzj"].sum(1))
    logits, x = torch.randn(32, 1, 64, 64), torch.ones(32, 1, 64, 64)
    p = beta_vae_loss(logits, x, mu, logvar, "TC", beta=6.0, z=z, dataset_size=1000)
    torch.testing.assert_close(p["mi"] + p["tc"] + p["dw_kl"], ref.mean())  # batch mean
    torch.testing.assert_close(p["loss"], p["recon"] + p["mi"] + 6.0 * p["tc"] + p["dw_kl"])
    assert p["kl_per_dim"].shape == (6,)
    torch.testing.assert_close(p["kl"], kl_per_dim(mu, logvar).sum())  # closed form, as for H


def test_mss_is_unbiased_over_every_minibatch():
    # N = 9 images, M = 4: each of the C(8, 3) = 56 batches that hold image n* is equally likely
    # under uniform sampling without replacement, so the mean of the estimated q(z*) over all of
    # them is the expectation itself, and must be the exact mixture density: no sampling error.
    n, m, d = 9, 4, 3
    z, mu, logvar = small_dataset(n, d, seed=4)
    exact, exact_j = exact_log_qz(z, mu, logvar)
    for star in range(n):
        others = [k for k in range(n) if k != star]
        est, est_j = [], []
        for i, rest in enumerate(itertools.combinations(others, m - 1)):
            pos = i % m  # the sample's place in the batch does not matter
            idx = list(rest[:pos]) + [star] + list(rest[pos:])
            t = tc_parts(z[idx], mu[idx], logvar[idx], dataset_size=n)
            est.append(t["log_qz"][pos].exp())
            est_j.append(t["log_qzj"][pos].exp())
        torch.testing.assert_close(torch.stack(est).mean(), exact[star].exp(), rtol=1e-10, atol=0)
        torch.testing.assert_close(torch.stack(est_j).mean(0), exact_j[star].exp(),
                                   rtol=1e-10, atol=0)


def test_mss_matches_exact_marginal_on_random_minibatches():
    # As in training: each epoch a random permutation cut into batches, float32. The mean of the
    # estimated q(z_n) over epochs must match the exact q(z_n) within 4.5 standard errors.
    n, m, d, epochs = 24, 6, 2, 600
    z, mu, logvar = (t.float() for t in small_dataset(n, d, seed=5))
    exact, exact_j = exact_log_qz(z.double(), mu.double(), logvar.double())
    g = torch.Generator().manual_seed(6)
    est = torch.empty(epochs, n, dtype=torch.float64)
    est_j = torch.empty(epochs, n, d, dtype=torch.float64)
    for e in range(epochs):
        for idx in torch.randperm(n, generator=g).view(-1, m):
            t = tc_parts(z[idx], mu[idx], logvar[idx], dataset_size=n)
            est[e, idx], est_j[e, idx] = t["log_qz"].double().exp(), t["log_qzj"].double().exp()
    for e_, ex in ((est, exact.exp()), (est_j, exact_j.exp())):
        se = e_.std(0) / math.sqrt(epochs)
        assert ((e_.mean(0) - ex).abs() / se).max() < 4.5
    # With the batch the whole dataset (M = N) every weight is 1/N: the estimate is exact.
    z, mu, logvar = small_dataset(n, d, seed=7)
    t = tc_parts(z, mu, logvar, dataset_size=n)
    exact, exact_j = exact_log_qz(z, mu, logvar)
    torch.testing.assert_close(t["log_qz"], exact, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(t["log_qzj"], exact_j, rtol=1e-12, atol=1e-12)


def test_mss_weights_follow_dataset_size_by_hand():
    # A batch of 3 in one dimension, by hand:
    #     log q(z_i) = log(q_ii / N + (N-1)/(2N) Σ_{m≠i} q_im).
    mu, var, z = [0.0, 1.0, -2.0], [1.0, 4.0, 0.25], [0.5, 1.5, -2.2]

    def q(i, m):
        return math.exp(-((z[i] - mu[m]) ** 2) / (2 * var[m])) / math.sqrt(2 * math.pi * var[m])

    args = [torch.tensor(v, dtype=torch.float64).view(3, 1) for v in (z, mu, var)]
    args[2] = args[2].log()
    results = {}
    for n in (3, 10, 737_280):
        t = tc_parts(*args, dataset_size=n)
        hand = [math.log(q(i, i) / n + (n - 1) / (2 * n) * sum(q(i, k) for k in range(3) if k != i))
                for i in range(3)]
        torch.testing.assert_close(t["log_qz"], torch.tensor(hand, dtype=torch.float64))
        torch.testing.assert_close(t["log_prod_qzj"], t["log_qz"])  # one dimension
        results[n] = t["log_qz"]
    # N = M: the exact average of the three; the own posterior's share shrinks as N grows.
    hand3 = [math.log(sum(q(i, k) for k in range(3)) / 3) for i in range(3)]
    torch.testing.assert_close(results[3], torch.tensor(hand3, dtype=torch.float64))
    assert not torch.allclose(results[10], results[737_280])
    w = mss_log_weights(3, 10, torch.float64).exp()
    torch.testing.assert_close(w, torch.tensor([[0.1, 0.45, 0.45], [0.45, 0.1, 0.45],
                                                [0.45, 0.45, 0.1]], dtype=torch.float64))
    torch.testing.assert_close(w.sum(1), torch.ones(3, dtype=torch.float64))  # a mixture


def test_tc_with_beta_one_matches_h_in_expectation():
    # E_z[mi + tc + dw_kl] = E_z[log q(z|x) - log p(z)] = KL(q(z|x) || p(z)), the closed form of H:
    # averaged over many z, TC with β = 1 must match H with β = 1 within 4 standard errors.
    # float64: the loss carries recon, whose float32 rounding would swamp the exact identity
    # checked for β ≠ 1. 8x8 "images": recon is a constant here, its size does not matter.
    g = torch.Generator().manual_seed(8)
    b, d, draws, f64 = 16, 4, 500, torch.float64
    mu = torch.randn(b, d, generator=g, dtype=f64)
    logvar = torch.randn(b, d, generator=g, dtype=f64)
    logits = torch.randn(b, 1, 8, 8, generator=g, dtype=f64)
    x = (torch.rand(b, 1, 8, 8, generator=g) > 0.5).to(f64)
    h = beta_vae_loss(logits, x, mu, logvar, "H", beta=1.0)["loss"]
    prior = Independent(Normal(0.0, torch.ones(d, dtype=f64)), 1)
    losses = []
    for _ in range(draws):
        z = mu + (0.5 * logvar).exp() * torch.randn(b, d, generator=g, dtype=f64)
        one = beta_vae_loss(logits, x, mu, logvar, "TC", beta=1.0, z=z, dataset_size=500)
        losses.append(one["loss"])
        if len(losses) <= 20:  # β ≠ 1 moves the loss by exactly (β - 1) · tc, for every z
            four = beta_vae_loss(logits, x, mu, logvar, "TC", beta=4.0, z=z, dataset_size=500)
            torch.testing.assert_close(four["loss"] - one["loss"], 3.0 * one["tc"])
            ref = (posterior(mu, logvar).log_prob(z) - prior.log_prob(z)).mean()
            torch.testing.assert_close(four["loss"], four["recon"] + ref + 3.0 * four["tc"])
    losses = torch.stack(losses)
    se = losses.std() / math.sqrt(draws)
    assert (losses.mean() - h).abs() < 4 * se


def test_tc_gradients_are_finite_with_extreme_variances():
    # Batch 64, d = 10, sigma from 6e-6 to 3,000. Rows of sigma 6e-6 in every dimension have
    # log q(z|x) ~ +106 nats, beyond float32's exp (88); rows of sigma 3,000 have ~ -94, which
    # with the weight 1/N falls below its smallest number (-103): only sums in log space
    # (logsumexp) keep log q(z) and the gradients finite.
    torch.manual_seed(9)
    logits = torch.randn(64, 1, 64, 64, requires_grad=True)
    x = (torch.rand(64, 1, 64, 64) > 0.5).float()
    mu = (3 * torch.randn(64, 10)).requires_grad_()
    logvar = torch.empty(64, 10).uniform_(-14, 10)
    logvar[:8] = -24.0
    logvar[8:16] = 16.0
    logvar.requires_grad_()
    z = mu + (0.5 * logvar).exp() * torch.randn(64, 10)
    parts = beta_vae_loss(logits, x, mu, logvar, "TC", beta=6.0, z=z, dataset_size=737_280)
    assert all(torch.isfinite(v).all() for v in parts.values())
    parts["loss"].backward()
    for p in (logits, mu, logvar):
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_tc_parts_float32_matches_float64_at_gpu_batch():
    # Batch 2048 of dSprites' 737,280 (the GPU batch), in float32 as train.py calls it, against
    # the same estimate in float64. d = 2 keeps the (M, M, d) pairs small for the CPU.
    torch.manual_seed(10)
    mu, logvar = 2 * torch.randn(2048, 2), torch.empty(2048, 2).uniform_(-12, 4)
    z = mu + (0.5 * logvar).exp() * torch.randn(2048, 2)
    t32 = tc_parts(z, mu, logvar, dataset_size=737_280)
    t64 = tc_parts(z.double(), mu.double(), logvar.double(), dataset_size=737_280)
    for k in t64:
        assert torch.isfinite(t32[k]).all()
        torch.testing.assert_close(t32[k].double(), t64[k], rtol=1e-5, atol=1e-4)


def test_tc_refuses_what_it_cannot_estimate():
    mu, logvar = torch.zeros(4, 3), torch.zeros(4, 3)
    logits, x = torch.zeros(4, 1, 64, 64), torch.ones(4, 1, 64, 64)
    with pytest.raises(ValueError, match="needs z"):
        beta_vae_loss(logits, x, mu, logvar, "TC", dataset_size=100)
    with pytest.raises(ValueError, match="dataset_size"):
        beta_vae_loss(logits, x, mu, logvar, "TC", z=mu)
    with pytest.raises(ValueError, match="at least 2"):  # one sample: no other posterior seen
        tc_parts(mu[:1], mu[:1], logvar[:1], dataset_size=100)
    with pytest.raises(ValueError, match="smaller than the batch"):
        tc_parts(mu, mu, logvar, dataset_size=3)
    two = tc_parts(torch.randn(2, 3), mu[:2], logvar[:2], dataset_size=100)  # smallest batch
    assert all(torch.isfinite(v).all() for v in two.values())


# ---------------------------------------------------------------- circle latents

def power_spherical_log_density(phi, theta, kappa):
    """log q(φ) on the circle (De Cao & Aziz 2020, eq. 2 with d = 2), the normaliser written out
    independently of loss.py: N = 2^(κ+1) √π Γ(κ + ½) / Γ(κ + 1)."""
    log_norm = ((kappa + 1) * math.log(2) + 0.5 * math.log(math.pi) + math.lgamma(kappa + 0.5)
                - math.lgamma(kappa + 1))
    return kappa * torch.log1p(torch.cos(phi - theta)) - log_norm


def circle_samples(theta, kappa, n, seed=0):
    """n posterior samples φ of one circle with mean angle theta and concentration kappa,
    drawn by model.py's sampler; theta and kappa may be tensors that require grad."""
    from model import BetaVAE

    torch.manual_seed(seed)
    model = BetaVAE(latent_dim=1, circles=1).train()
    mu = torch.as_tensor(theta, dtype=torch.float32).reshape(1, 1).expand(n, 1)
    log_kappa = torch.log(torch.as_tensor(kappa, dtype=torch.float32)).reshape(1, 1).expand(n, 1)
    return model.reparameterize(mu, log_kappa)[:, 0]


@pytest.mark.parametrize("kappa", [0.5, 3.0, 50.0, 1000.0])
def test_power_spherical_density_normalises_and_kl_matches_monte_carlo(kappa):
    """The density integrates to 1 (trapezoid over 200,001 angles); the closed-form KL equals a
    Monte Carlo estimate of E[log q − log p] over 400,000 samples within 1 %."""
    grid = torch.linspace(-math.pi, math.pi, 200_001, dtype=torch.float64)
    mass = torch.trapezoid(power_spherical_log_density(grid, 0.0, kappa).exp(), grid)
    assert abs(mass.item() - 1) < 1e-4
    phi = circle_samples(0.4, kappa, 400_000).double()
    mc = (power_spherical_log_density(phi, 0.4, kappa) + math.log(2 * math.pi)).mean()
    closed = power_spherical_kl(torch.tensor([math.log(kappa)]))
    assert abs(closed.item() / mc.item() - 1) < 0.01, (closed, mc)


def test_power_spherical_kl_is_non_negative_and_vanishes_with_the_concentration():
    log_kappa = torch.linspace(-20, 12, 321)  # κ from 2e-9 to 1.6e5
    kl = power_spherical_kl(log_kappa)
    assert (kl >= -1e-12).all()  # ≥ 0 up to float64 rounding of terms of order 1
    assert (kl[120:].diff() > 0).all()  # κ ≥ 3e-4: more concentrated, further from uniform
    assert kl[0].abs() < 1e-12
    big = math.exp(12)  # ½ log κ + ½ log π − ½ + O(1/κ)
    assert abs(kl[-1].item() - (0.5 * math.log(big) + 0.5 * math.log(math.pi) - 0.5)) < 1e-3


@pytest.mark.parametrize("kappa", [0.3, 4.0, 200.0])
def test_circle_samples_have_the_mean_direction_and_resultant_length(kappa):
    """E[cos(φ − θ)] = E[w] = 2 E[t] − 1 = κ / (κ + 1) for t ~ Beta(κ + ½, ½); E[sin(φ − θ)] = 0;
    within 4 standard errors over 200,000 samples."""
    phi = circle_samples(-2.5, kappa, 200_000, seed=1).double()
    cos, sin = torch.cos(phi + 2.5), torch.sin(phi + 2.5)
    for values, expected in ((cos, kappa / (kappa + 1)), (sin, 0.0)):
        stderr = values.std() / math.sqrt(len(values))
        assert abs(values.mean() - expected) < 4 * stderr + 1e-6, (values.mean(), expected)
    assert phi.min() >= -math.pi and phi.max() < math.pi


def test_gradients_reach_direction_and_concentration_through_the_sample():
    """E[cos φ] = cos θ · κ/(κ + 1): the pathwise gradients, averaged over samples, match
    d/dθ = −sin θ · κ/(κ + 1) and d/dκ = cos θ / (κ + 1)² within 5 %."""
    theta = torch.tensor(0.7, requires_grad=True)
    kappa = torch.tensor(2.0, requires_grad=True)
    torch.cos(circle_samples(theta, kappa, 400_000, seed=2)).mean().backward()
    k, t = kappa.item(), theta.item()
    assert abs(theta.grad.item() / (-math.sin(t) * k / (k + 1)) - 1) < 0.05
    assert abs(kappa.grad.item() / (math.cos(t) / (k + 1) ** 2) - 1) < 0.05


def test_circles_enter_the_kl_of_h_and_b_and_tc_refuses_them():
    torch.manual_seed(3)
    logits, x = torch.randn(4, 1, 64, 64), torch.ones(4, 1, 64, 64)
    mu, logvar = torch.randn(4, 5), torch.randn(4, 5)
    dims = kl_per_dim(mu, logvar, circles=2)
    torch.testing.assert_close(dims[:2], power_spherical_kl(logvar[:, :2]).mean(0))
    torch.testing.assert_close(dims[2:], kl_per_dim(mu[:, 2:], logvar[:, 2:]))
    h = beta_vae_loss(logits, x, mu, logvar, "H", beta=4.0, circles=2)
    torch.testing.assert_close(h["loss"], h["recon"] + 4.0 * dims.sum())
    b = beta_vae_loss(logits, x, mu, logvar, "B", gamma=100.0, c=1.0, circles=2)
    torch.testing.assert_close(b["loss"], b["recon"] + 100.0 * (dims.sum() - 1.0).abs())
    with pytest.raises(ValueError, match="Gaussian latents only"):
        beta_vae_loss(logits, x, mu, logvar, "TC", z=mu, dataset_size=100, circles=1)
    with pytest.raises(ValueError, match="Gaussian latents only"):
        beta_vae_loss(logits, x, mu, logvar, "F", gamma=35.0, tc=torch.tensor(0.1), circles=1)
