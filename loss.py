"""The β-VAE objectives: a Bernoulli ELBO with a weighted KL term. Pure functions of tensors.

    python loss.py        # checks the closed-form KL and the β-TCVAE estimator against
                          # torch.distributions

Four objectives (README, "ELBO Loss"):
  H  (Higgins et al. 2017, eq. 4):  L = recon + β · KL
  B  (Burgess et al. 2018, eq. 8):  L = recon + γ · |KL − C|,  C raised linearly from 0 to C_max
  F  (Kim & Mnih 2018, "Disentangling by Factorising", eq. 2):
                                    L = recon + KL + γ · TC,  TC estimated by a discriminator
                                    (discriminator.py's tc_estimate), passed in as `tc`
  TC (Chen et al. 2018, "Isolating Sources of Disentanglement in VAEs", eq. 4, α = γ = 1):
                                    L = recon + I + β · TC + Σ_j KL(q(z_j) || p(z_j))
     where KL(q(z|x) || p(z)) averaged over the data splits into the index-code mutual
     information I = E[log q(z|x) − log q(z)], the total correlation
     TC = E[log q(z) − Σ_j log q(z_j)] and the dimension-wise KL E[Σ_j log q(z_j) − log p(z)]
     (eq. 2). The aggregate posterior q(z) = 1/N Σ_n q(z|x_n) is estimated from the batch by
     minibatch stratified sampling (section 4.1, appendix C.2): tc_parts().
Circle latents (model.py, `circles`): the first `circles` columns of mu and logvar hold a mean
angle θ and log κ; their posterior is the Power Spherical distribution on S¹ (De Cao & Aziz 2020)
and their prior the uniform one, with the closed-form KL of power_spherical_kl(). They enter H
and B wherever the Gaussian KL does; TC's estimator is for Gaussian latents only.
Each returns its parts, so callers can log them; every term is summed over pixels or latent
dimensions and averaged over the batch, so β keeps the meaning it has in the papers.
"""
import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2 * math.pi)


def reconstruction_loss(logits, x):
    """-log p(x|z) under a Bernoulli decoder: BCE with logits, summed over pixels, batch mean."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / x.shape[0]


def kl_per_dim(mu, logvar, circles=0):
    """KL(N(mu, sigma^2) || N(0, 1)) for each latent dimension, averaged over the batch; for the
    first `circles` dimensions (circles: logvar holds log κ) power_spherical_kl instead.

    Closed form (Kingma & Welling 2014, appendix B): 0.5 * (mu^2 + sigma^2 - log sigma^2 - 1).
    """
    gauss = 0.5 * (mu[:, circles:].pow(2) + logvar[:, circles:].exp() - logvar[:, circles:] - 1)
    if not circles:
        return gauss.mean(0)
    return torch.cat([power_spherical_kl(logvar[:, :circles]), gauss], 1).mean(0)


def power_spherical_kl(log_kappa):
    """KL(PowerSpherical(μ, κ) || uniform on the circle S¹), elementwise in κ = exp(log_kappa);
    it does not depend on the direction μ.

    The density on S^(d-1) is (1 + μ·x)^κ / N with N = 2^(a+b) π^b Γ(a) / Γ(a+b), a = (d-1)/2 + κ,
    b = (d-1)/2, and E[log(1 + μ·x)] = log 2 + ψ(a) − ψ(a+b) (De Cao & Aziz 2020, eqs. 2 and
    7-8). With d = 2 the uniform density is 1/(2π), and KL = E[log q] + log 2π reduces to
        ½ log π − log Γ(κ + ½) + log Γ(κ + 1) + κ (ψ(κ + ½) − ψ(κ + 1)),
    0 at κ = 0 and ½ log κ + ½ log π − ½ + O(1/κ) for large κ. In float64: the terms cancel to
    a few nats from values that grow like κ log κ (float32 on Apple's MPS, which has no float64).
    """
    k = log_kappa.to(torch.float32 if log_kappa.device.type == "mps" else torch.float64).exp()
    kl = (0.5 * math.log(math.pi) - torch.lgamma(k + 0.5) + torch.lgamma(k + 1)
          + k * (torch.digamma(k + 0.5) - torch.digamma(k + 1)))
    return kl.to(log_kappa.dtype)


def linear_ramp(step, final, steps):
    """final * min(step / steps, 1): 0 at step 0, `final` from step `steps` on (steps 0: always
    final). Burgess et al.'s capacity C (eq. 8), and the warm-up of β."""
    return final * min(step / steps, 1.0) if steps else final


def log_normal(z, mu, logvar):
    """log N(z; mu, exp(logvar)) elementwise (broadcasting), one value per latent dimension."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar))


def mss_log_weights(batch_size, dataset_size, dtype=torch.float32, device=None):
    """(M, M) log importance weights of minibatch stratified sampling (Chen et al. 2018, C.2),
    in a symmetric form: C.2 gives one other image a stratum and weight of its own; averaging its
    matrix over which image that is gives these weights, the same expectation, exact at M = N.

    Row i estimates q(z_i) = 1/N Σ_n q(z_i|x_n) from the batch, for the z_i drawn from sample i's
    own posterior. The dataset splits into two strata: {x_i} itself, whose term is known exactly
    (weight 1/N), and the N − 1 other images, of which the batch holds a uniform sample of M − 1
    without replacement; each other image is in it with probability (M − 1)/(N − 1), so the
    weight (N − 1) / (N (M − 1)) on each of them makes the estimate of q(z_i) unbiased:
        diagonal (own posterior): 1 / N,   off-diagonal: (N − 1) / (N (M − 1)).
    With M = N every weight is 1/N and the estimate is exact. Needs 2 <= M <= N.
    """
    M, N = batch_size, dataset_size
    if M < 2:
        raise ValueError(f"minibatch stratified sampling needs a batch of at least 2, got {M}: "
                         "one sample says nothing about the other N - 1 posteriors in q(z)")
    if N < M:
        raise ValueError(f"dataset_size {N} is smaller than the batch ({M}); the batch must be "
                         "distinct images of the dataset")
    # In Python floats (double) before the cast: 1/N is ~1e-6 for dSprites.
    log_own = -math.log(N)
    log_other = math.log(N - 1) - math.log(N) - math.log(M - 1)
    w = torch.full((M, M), log_other, dtype=dtype, device=device)
    w.fill_diagonal_(log_own)
    return w


def tc_parts(z, mu, logvar, dataset_size):
    """Per-sample log densities of the β-TCVAE decomposition (Chen et al. 2018, eq. 2 and C.2).

    z, mu, logvar: (M, d); z[i] is a sample of sample i's posterior N(mu[i], exp(logvar[i])),
    the batch a uniform sample without replacement of a dataset of dataset_size = N images.
    Returns a dict of tensors, each per sample (M,) unless noted:
      log_qz_x:     log q(z_i|x_i), exact, summed over dimensions
      log_qz:       log q(z_i), the MSS estimate  log Σ_m w_im q(z_i|x_m)   (mss_log_weights)
      log_qzj:      (M, d) log q(z_ij) per dimension, the same estimate per dimension
      log_prod_qzj: Σ_j log q(z_ij)
      log_pz:       log p(z_i) under the prior N(0, I)
    exp(log_qz) and exp(log_qzj) are unbiased estimates of q(z_i) and q(z_ij) over the batches
    that contain sample i; their logs, the paper's estimator, are biased low (Jensen).
    Raises ValueError for a batch of fewer than 2 or larger than N.
    """
    if z.dim() != 2 or z.shape != mu.shape or mu.shape != logvar.shape:
        raise ValueError(f"z, mu and logvar must be (batch, latent) of one shape, got "
                         f"{tuple(z.shape)}, {tuple(mu.shape)}, {tuple(logvar.shape)}")
    M = z.shape[0]
    log_w = mss_log_weights(M, dataset_size, z.dtype, z.device)  # (M, M)
    # log q(z_ij | x_m) for every pair (i, m) and dimension j: (M, M, d). The weights enter in
    # log space and the sums over m go through logsumexp: over 10 dimensions a narrow posterior's
    # own density overflows float32 (e^88) and a wide one's, times 1/N, underflows it.
    log_q_pairs = log_normal(z.unsqueeze(1), mu.unsqueeze(0), logvar.unsqueeze(0))
    log_qz = torch.logsumexp(log_q_pairs.sum(2) + log_w, dim=1)  # joint density: dims summed
    log_qzj = torch.logsumexp(log_q_pairs + log_w.unsqueeze(2), dim=1)  # each dimension alone
    return {
        "log_qz_x": log_normal(z, mu, logvar).sum(1),
        "log_qz": log_qz,
        "log_qzj": log_qzj,
        "log_prod_qzj": log_qzj.sum(1),
        "log_pz": -0.5 * (LOG_2PI + z.pow(2)).sum(1),
    }


def beta_vae_loss(logits, x, mu, logvar, objective="H", beta=4.0, gamma=None, c=0.0, z=None,
                  dataset_size=None, circles=0, tc=None):
    """Total loss and its parts: dict(loss, recon, kl, kl_per_dim), and for "TC" mi, tc, dw_kl.

    objective "H": recon + beta * KL.  objective "B": recon + gamma * |KL - c| (c: linear_ramp();
    KL the batch mean, as in disentanglement_lib: the average KL is held at c, not each image's).
    objective "TC": recon + mi + beta * tc + dw_kl (Chen et al. 2018, eq. 4 with α = γ = 1);
    needs z, the (B, d) posterior sample decoded into logits (not detached: the estimates are
    reparameterised through it), and dataset_size, the N images the batch was drawn from
    (737,280 for dSprites). mi, tc and dw_kl are batch means of the estimates of tc_parts();
    they sum to the mean of log q(z|x) − log p(z), a one-sample estimate of the closed-form KL,
    which is still reported as kl (and kl_per_dim) for comparison.
    objective "F": recon + KL + gamma * tc, tc the discriminator's estimate of the total
    correlation (a scalar that carries the gradient to the encoder through z); reported as tc.
    gamma has no default: the papers' differ (B 1000, F 35 on dSprites, train.py's GAMMA).
    circles: how many leading latents are circles (model.py); H and B only.
    """
    if objective in ("B", "F") and gamma is None:
        raise ValueError(f"objective {objective!r} needs gamma (dSprites: B 1000, F 35)")
    if circles and objective in ("TC", "F"):
        raise ValueError(f"objective {objective!r} estimates the total correlation of Gaussian "
                         "latents only; it takes no circles")
    recon = reconstruction_loss(logits, x)
    kl_dims = kl_per_dim(mu, logvar, circles)
    kl = kl_dims.sum()
    parts = {}
    if objective == "H":
        total = recon + beta * kl
    elif objective == "B":
        total = recon + gamma * (kl - c).abs()
    elif objective == "F":
        if tc is None:
            raise ValueError("objective 'F' needs tc, the discriminator's estimate of the total "
                             "correlation (discriminator.tc_estimate)")
        parts = {"tc": tc}
        total = recon + kl + gamma * tc
    elif objective == "TC":
        if z is None or dataset_size is None:
            raise ValueError("objective 'TC' needs z (the posterior sample decoded into logits) "
                             "and dataset_size (the number of images in the dataset)")
        t = tc_parts(z, mu, logvar, dataset_size)
        parts = {
            "mi": (t["log_qz_x"] - t["log_qz"]).mean(),  # index-code mutual information
            "tc": (t["log_qz"] - t["log_prod_qzj"]).mean(),  # total correlation
            "dw_kl": (t["log_prod_qzj"] - t["log_pz"]).mean(),  # Σ_j KL(q(z_j) || p(z_j))
        }
        total = recon + parts["mi"] + beta * parts["tc"] + parts["dw_kl"]
    else:
        raise ValueError(f"unknown objective {objective!r}; choose from 'H', 'B', 'TC', 'F'")
    return {"loss": total, "recon": recon, "kl": kl, "kl_per_dim": kl_dims, **parts}


if __name__ == "__main__":
    from torch.distributions import Independent, Normal, kl_divergence

    mu, logvar = torch.randn(8, 10), torch.randn(8, 10)
    closed = kl_per_dim(mu, logvar)
    ref = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).mean(0)
    print(f"max |closed form - torch.distributions| = {(closed - ref).abs().max():.2e}")

    # A batch that is the whole dataset (M = N): every MSS weight is 1/N and the estimate of
    # log q(z) is the exact log of the mixture 1/N Σ_n q(z|x_n).
    post = Independent(Normal(mu, (0.5 * logvar).exp()), 1)
    z = post.sample()
    exact = torch.logsumexp(post.log_prob(z.unsqueeze(1)), dim=1) - math.log(len(z))
    mss = tc_parts(z, mu, logvar, dataset_size=len(z))["log_qz"]
    print(f"max |MSS log q(z) at M = N - exact mixture| = {(mss - exact).abs().max():.2e}")
