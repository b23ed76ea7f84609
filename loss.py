"""The β-VAE objective: a Bernoulli ELBO with a weighted KL term. Pure functions of tensors.

    python loss.py        # checks the closed-form KL against torch.distributions

Two objectives (README, "ELBO Loss"):
  H (Higgins et al. 2017, eq. 4):  L = recon + β · KL
  B (Burgess et al. 2018, eq. 8):  L = recon + γ · |KL − C|,  C raised linearly from 0 to C_max
Each returns its parts, so callers can log them; every term is summed over pixels or latent
dimensions and averaged over the batch, so β keeps the meaning it has in the papers.
"""
import torch
import torch.nn.functional as F


def reconstruction_loss(logits, x):
    """-log p(x|z) under a Bernoulli decoder: BCE with logits, summed over pixels, batch mean."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / x.shape[0]


def kl_per_dim(mu, logvar):
    """KL(N(mu, sigma^2) || N(0, 1)) for each latent dimension, averaged over the batch.

    Closed form (Kingma & Welling 2014, appendix B): 0.5 * (mu^2 + sigma^2 - log sigma^2 - 1).
    """
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).mean(0)


def linear_ramp(step, final, steps):
    """final * min(step / steps, 1): 0 at step 0, `final` from step `steps` on (steps 0: always
    final). Burgess et al.'s capacity C (eq. 8), and the warm-up of β."""
    return final * min(step / steps, 1.0) if steps else final


def beta_vae_loss(logits, x, mu, logvar, objective="H", beta=4.0, gamma=1000.0, c=0.0):
    """Total loss and its parts: dict(loss, recon, kl, kl_per_dim).

    objective "H": recon + beta * KL.  objective "B": recon + gamma * |KL - c| (c: linear_ramp()).
    """
    recon = reconstruction_loss(logits, x)
    kl_dims = kl_per_dim(mu, logvar)
    kl = kl_dims.sum()
    if objective == "H":
        total = recon + beta * kl
    elif objective == "B":
        total = recon + gamma * (kl - c).abs()
    else:
        raise ValueError(f"unknown objective {objective!r}; choose from 'H', 'B'")
    return {"loss": total, "recon": recon, "kl": kl, "kl_per_dim": kl_dims}


if __name__ == "__main__":
    from torch.distributions import Normal, kl_divergence

    mu, logvar = torch.randn(8, 10), torch.randn(8, 10)
    closed = kl_per_dim(mu, logvar)
    ref = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).mean(0)
    print(f"max |closed form - torch.distributions| = {(closed - ref).abs().max():.2e}")
