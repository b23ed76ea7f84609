"""FactorVAE's discriminator and its total-correlation estimate (Kim & Mnih 2018, "Disentangling
by Factorising", ICML): the discriminator module and three functions of tensors.

    python discriminator.py   # trains a small discriminator on a correlated 2-D Gaussian and
                              # prints its TC estimate against the closed form -½ log(1 - ρ²)

Depends on torch alone: copy this file into your own project, like model.py.

FactorVAE (eq. 2) adds γ · TC(z) to the VAE's loss, with the total correlation
    TC(z) = KL(q(z) || q̄(z)),  q̄(z) = ∏_j q(z_j),
of the aggregate posterior q(z) = 1/N Σ_n q(z|x_n). Neither density is tractable, but both can be
sampled: z = a posterior sample of each image in a batch is a sample of q(z), and permuting each
latent column independently across a batch (Algorithm 1, permute_dims()) gives samples of q̄(z).
A classifier D(z) = P(z came from q(z), not from q̄(z)) trained on the two is, at its optimum,
q(z) / (q(z) + q̄(z)): the density-ratio trick (section 3) then gives
    TC(z) ≈ E_q(z)[log D(z) / (1 − D(z))]                                     (tc_estimate())
With two logits and a softmax, D = softmax(logits)[joint], so log D/(1 − D) = logit_joint −
logit_product. One training step (Algorithm 2) with a VAE `model` and this `disc`:
    z = model.reparameterize(*model.encode(x))         # batch 1: samples of q(z)
    vae_loss = elbo_loss + GAMMA * tc_estimate(disc, z)
    z2 = model.reparameterize(*model.encode(x2))       # batch 2, drawn independently
    disc_loss, accuracy = discriminator_loss(disc, z, permute_dims(z2))
each loss stepped by its own Adam (the VAE's: VAE_LR, PyTorch's betas (0.9, 0.999); the
discriminator's: DISC_LR, DISC_BETAS): tc_estimate() cannot move the discriminator,
discriminator_loss() cannot move the encoder.

Sources, each setting cited to the code that states it (the paper's appendix is not quoted):
- Architecture: disentanglement_lib (google-research), methods/shared/architectures.py,
  fc_discriminator ("Fully connected discriminator used in FactorVAE paper for all datasets.
  Based on Appendix A page 11"): six dense layers of 1000 units with tf.nn.leaky_relu (its
  default slope: 0.2), then a dense layer of 2 logits and a softmax.
- Adam: disentanglement_lib, config/unsupervised_study_v1/model_configs/shared.gin: VAE lr 1e-4,
  β1 0.9, β2 0.999; discriminator lr 1e-4, β1 0.5, β2 0.9 (ε 1e-8 both, batch 64); the same
  numbers as 1Konny/FactorVAE's scripts/run_dsprites.sh.
- TC = mean(logit_joint − logit_product), class 0 the joint: disentanglement_lib,
  methods/unsupervised/vae.py, FactorVAE.model_fn.
- Eq. 2 is the FactorVAE objective (disentanglement_lib's FactorVAE docstring: "Implementing
  Eq. 2"); Algorithm 1 is permute_dims, Algorithm 2 the training loop (disentangling-vae's
  _permute_dims and FactorKLoss docstrings).
- The second batch: the paper's Algorithm 2 permutes the codes of a second, independent batch
  (YannDubs/disentangling-vae, disvae/models/losses.py, FactorKLoss: "In the paper they sample 2
  batches"); disentanglement_lib's FactorVAE shuffles the first batch's codes instead.
- γ: disentanglement_lib sweeps factor_vae.gamma over 10, 20, 30, 40, 50, 100
  (config/unsupervised_study_v1/sweep.py). GAMMA = 35 is the value attributed to the paper's
  dSprites traversal figure, unverified against the paper's text; 1Konny/FactorVAE's first
  dSprites script (commit 04392e7) used 35 too, before switching to 6.4 (commit ee4aaf3).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

GAMMA = 35.0  # dSprites TC weight, unverified against the paper's text (docstring, "Sources")
VAE_LR = 1e-4  # disentanglement_lib unsupervised_study_v1 shared.gin (betas: Adam's defaults)
DISC_LR, DISC_BETAS = 1e-4, (0.5, 0.9)  # the same file: discriminator/AdamOptimizer


class Discriminator(nn.Module):
    """The paper's MLP: `layers` hidden layers of `hidden` units, LeakyReLU(0.2), then 2 logits
    per sample: column 0 "z is from q(z)" (joint), column 1 "z is from q̄(z)" (product)."""

    def __init__(self, latent_dim, hidden=1000, layers=6):
        super().__init__()
        body, width = [], latent_dim
        for _ in range(layers):
            # LeakyReLU in place: it overwrites its Linear's output, which backward does not need
            body += [nn.Linear(width, hidden), nn.LeakyReLU(0.2, inplace=True)]  # B, hidden
            width = hidden
        self.net = nn.Sequential(*body, nn.Linear(width, 2))  # B, 2: logits (joint, product)

    def forward(self, z):
        """z: (B, latent_dim) -> logits (B, 2)."""
        return self.net(z)


def permute_dims(z):
    """Samples of q̄(z) = ∏_j q(z_j) from samples of q(z) (Algorithm 1): each column of z (B, d)
    permuted across the batch by its own torch.randperm (torch's global RNG, so a seeded run
    repeats). Every column keeps its values; the pairing between columns is broken. z itself is
    left untouched."""
    b, d = z.shape
    idx = torch.stack([torch.randperm(b, device=z.device) for _ in range(d)], 1)  # B, d
    return torch.gather(z, 0, idx)  # B, d: row i of column j is z[idx[i, j], j]


def tc_estimate(disc, z):
    """TC(z) ≈ E_q(z)[log D(z) / (1 − D(z))] (section 3), the batch mean of logit_joint −
    logit_product: the term the VAE's loss weights by γ (eq. 2). The discriminator runs on
    detached copies of its parameters, so the gradient reaches z (and the encoder) but never
    the discriminator."""
    params = {name: p.detach() for name, p in disc.named_parameters()}
    logits = functional_call(disc, params, (z,))  # B, 2
    return (logits[:, 0] - logits[:, 1]).mean()


def discriminator_loss(disc, z, z_perm):
    """Cross-entropy of D telling samples of q(z) (z, class 0) from samples of q̄(z) (z_perm,
    class 1), Algorithm 2's discriminator objective: −½ (mean log D(z) + mean log(1 −
    D(z_perm))) for equal batches. Inputs are detached: no gradient reaches the encoder.
    Returns (loss, accuracy), accuracy the fraction of the 2B samples classed right, a tensor."""
    logits = disc(torch.cat([z, z_perm]).detach())  # 2B, 2
    labels = torch.cat([torch.zeros(len(z), dtype=torch.long, device=z.device),
                        torch.ones(len(z_perm), dtype=torch.long, device=z.device)])  # 2B
    return F.cross_entropy(logits, labels), (logits.argmax(1) == labels).float().mean()


if __name__ == "__main__":
    # z ~ N(0, [[1, ρ], [ρ, 1]]): q(z_1) q(z_2) is N(0, I), TC = I(z_1; z_2) = -½ log(1 - ρ²).
    torch.manual_seed(0)
    torch.set_num_threads(1)  # a tiny MLP gains nothing from more; the numbers repeat anywhere
    rho, batch, steps = 0.9, 512, 800

    def sample(n):
        e = torch.randn(n, 2)
        return torch.stack([e[:, 0], rho * e[:, 0] + math.sqrt(1 - rho ** 2) * e[:, 1]], 1)

    # Smaller than the paper's 6x1000 (seconds on a CPU), and a learning rate that decays
    # linearly to 0 so the final discriminator has settled; fresh samples every step.
    disc = Discriminator(2, hidden=128, layers=3)
    opt = torch.optim.Adam(disc.parameters(), lr=2e-3, betas=DISC_BETAS)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 - k / steps)
    for _ in range(steps):
        loss, acc = discriminator_loss(disc, sample(batch), permute_dims(sample(batch)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        est = tc_estimate(disc, sample(100_000)).item()
    print(f"rho {rho}: TC estimate {est:.3f} nats, closed form {-0.5 * math.log(1 - rho ** 2):.3f}"
          f" (discriminator accuracy {acc.item():.3f} after {steps} steps)")
    print(Discriminator(10))
