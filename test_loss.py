"""The ELBO parts against independent references."""
import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from loss import beta_vae_loss, kl_per_dim, linear_ramp, reconstruction_loss


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
    with pytest.raises(ValueError, match="choose from 'H', 'B'"):
        beta_vae_loss(logits, x, mu, logvar, "C")


def test_linear_ramp_rises_then_holds():
    assert linear_ramp(0, 25, 100) == 0
    assert linear_ramp(50, 25, 100) == 12.5
    assert linear_ramp(100, 25, 100) == linear_ramp(10_000, 25, 100) == 25
    assert linear_ramp(0, 4.0, 0) == 4.0  # no ramp: the final value from the start
