"""The β-VAE of Burgess et al. 2018 ("Understanding disentangling in β-VAE"), for 64x64 images.

    python model.py        # prints the layers and parameter count

Depends on torch alone: copy this file into your own project. The decoder returns logits of a
Bernoulli distribution per pixel; pair it with loss.py.

Latents are Gaussian, N(μ, σ²), except the first `circles`, which live on the circle S¹: each
has a mean angle θ and a concentration κ, its posterior is the Power Spherical distribution
(De Cao & Aziz 2020) and the decoder reads it as (cos φ, sin φ). A circle has no seam, so it can
turn a sprite through its whole period. Per latent, encode() returns (location, log spread):
(μ, log σ²) for a Gaussian, (θ, log κ) for a circle, so a code z stays one number per latent.
"""
import math

import torch
from torch import nn


def init_weights(model):
    """He et al. 2015 ("Delving deep into rectifiers", eq. 10) for every conv and linear layer:
    weights uniform with variance 2 / fan_in, biases zero. fan_in counts the inputs summed into
    one output: in·k·k for a conv, in for a linear layer, in·k·k / stride² for a transposed
    conv (each output pixel meets 2x2 of its 4x4 kernel taps). Not applied by BetaVAE, which
    keeps PyTorch's default (variance 1 / (3 fan_in)); README, "The recipe", says when each
    wins. train.py --init he applies this one."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
        elif isinstance(m, nn.ConvTranspose2d):
            fan_in = m.weight.shape[0] * m.weight[0, 0].numel() // (m.stride[0] * m.stride[1])
        else:
            continue
        bound = (6 / fan_in) ** 0.5  # uniform(-b, b) has variance b² / 3 = 2 / fan_in
        nn.init.uniform_(m.weight, -bound, bound)
        nn.init.zeros_(m.bias)


class BetaVAE(nn.Module):
    def __init__(self, latent_dim=10, channels=1, circles=0):
        super().__init__()
        if not 0 <= circles <= latent_dim:
            raise ValueError(f"circles must be between 0 and latent_dim ({latent_dim}), "
                             f"got {circles}")
        # Constructor arguments: checkpoints store them, so BetaVAE(**config) rebuilds the model.
        self.config = {"latent_dim": latent_dim, "channels": channels}
        if circles:  # circles=0 is the Gaussian model of the papers, config and all
            self.config["circles"] = circles
        self.latent_dim, self.circles = latent_dim, circles
        gauss = latent_dim - circles
        # ReLUs in place: each overwrites the output of the layer before it, which backward
        # does not need, instead of writing a fresh copy (8 MB for a 32x32x32 layer at batch 64).
        # Encoder: 4 x (conv 4x4, stride 2) halves 64 -> 4; then two hidden FC layers.
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, 32, 4, 2, 1), nn.ReLU(inplace=True),  # B, 32, 32, 32
            nn.Conv2d(32, 32, 4, 2, 1), nn.ReLU(inplace=True),  # B, 32, 16, 16
            nn.Conv2d(32, 32, 4, 2, 1), nn.ReLU(inplace=True),  # B, 32, 8, 8
            nn.Conv2d(32, 32, 4, 2, 1), nn.ReLU(inplace=True),  # B, 32, 4, 4
            nn.Flatten(),  # B, 512
            nn.Linear(512, 256), nn.ReLU(inplace=True),  # B, 256
            nn.Linear(256, 256), nn.ReLU(inplace=True),  # B, 256
            # B, 3*circles + 2*gauss: per circle its direction (x, y) and log kappa, then the
            # Gaussian latents' mu, then their log sigma^2
            nn.Linear(256, 2 * gauss + 3 * circles),
        )
        # Decoder: the mirror image, ending in logits for every pixel.
        self.decoder = nn.Sequential(
            nn.Linear(gauss + 2 * circles, 256), nn.ReLU(inplace=True),  # B, 256
            nn.Linear(256, 256), nn.ReLU(inplace=True),  # B, 256
            nn.Linear(256, 512), nn.ReLU(inplace=True),  # B, 512
            nn.Unflatten(1, (32, 4, 4)),  # B, 32, 4, 4
            nn.ConvTranspose2d(32, 32, 4, 2, 1), nn.ReLU(inplace=True),  # B, 32, 8, 8
            nn.ConvTranspose2d(32, 32, 4, 2, 1), nn.ReLU(inplace=True),  # B, 32, 16, 16
            nn.ConvTranspose2d(32, 32, 4, 2, 1), nn.ReLU(inplace=True),  # B, 32, 32, 32
            nn.ConvTranspose2d(32, channels, 4, 2, 1),  # B, C, 64, 64: logits
        )

    def encode(self, x):
        """x: (B, C, 64, 64) in [0, 1] -> mu, logvar, each (B, latent_dim). For a circle
        (the first `circles` columns) mu holds its mean angle θ in [-π, π] and logvar log κ."""
        h = self.encoder(x)
        if not self.circles:
            return h.chunk(2, dim=1)
        c = self.circles
        gauss_mu, gauss_logvar = h[:, 3 * c:].chunk(2, dim=1)  # B, latent - c each
        circ = h[:, :3 * c].float().view(-1, c, 3)  # B, c, 3: x, y, log kappa
        theta = torch.atan2(circ[..., 1], circ[..., 0])  # B, c: the direction's angle
        # fp32 throughout (bf16 under autocast would round an angle by up to 0.008 rad)
        return (torch.cat([theta, gauss_mu.float()], 1),
                torch.cat([circ[..., 2], gauss_logvar.float()], 1))

    def reparameterize(self, mu, logvar):
        """A posterior sample; mu in eval mode. Gaussian: z = μ + σ ε, ε ~ N(0, I) (Kingma &
        Welling 2014, eq. 10). Circle: φ = θ + δ with the Power Spherical sampler in 2-D (De Cao
        & Aziz 2020, algorithm 1): the cosine of the offset δ is w = 1 − 2s, s ~ Beta(½, κ + ½)
        (s is 1 − z of the paper's z ~ Beta(κ + ½, ½), w = 2z − 1: exact as κ grows, where z
        rounds to 1), its sign ±1 at random; Beta's rsample carries the gradient to κ, φ's to
        θ. Beta's argument checks are off: a NaN κ is left to the caller's finite-loss check,
        and they would cost a host sync per step on a GPU."""
        if not self.training:
            return mu
        c = self.circles
        z = mu[:, c:] + torch.exp(0.5 * logvar[:, c:]) * torch.randn_like(mu[:, c:])
        if not c:
            return z
        kappa = logvar[:, :c].exp()
        s = torch.distributions.Beta(torch.full_like(kappa, 0.5), kappa + 0.5,
                                     validate_args=False).rsample()
        sign = torch.randint_like(s, 2) * 2 - 1
        delta = torch.atan2(sign * 2 * torch.sqrt(s * (1 - s)), 1 - 2 * s)  # sin δ, cos δ
        return torch.cat([torch.remainder(mu[:, :c] + delta + math.pi, 2 * math.pi) - math.pi,
                          z], 1)

    def decode(self, z):
        """z: (B, latent_dim), a circle's column an angle -> logits (B, C, 64, 64)."""
        if self.circles:
            phi = z[:, :self.circles]
            z = torch.cat([torch.cos(phi), torch.sin(phi), z[:, self.circles:]], 1)
        return self.decoder(z)

    def forward(self, x):
        """x -> (logits, mu, logvar)."""
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar


if __name__ == "__main__":
    model = BetaVAE()
    print(model)
    print(f"{sum(p.numel() for p in model.parameters()):,} parameters")
