"""The β-VAE of Burgess et al. 2018 ("Understanding disentangling in β-VAE"), for 64x64 images.

    python model.py        # prints the layers and parameter count

Depends on torch alone: copy this file into your own project. The decoder returns logits of a
Bernoulli distribution per pixel; pair it with loss.py.
"""
import torch
from torch import nn


def init_weights(model):
    """He et al. 2015 ("Delving deep into rectifiers", eq. 10) for every conv and linear layer:
    weights uniform with variance 2 / fan_in, biases zero. fan_in counts the inputs summed into
    one output: in·k·k for a conv, in for a linear layer, in·k·k / stride² for a transposed
    conv (each output pixel meets 2x2 of its 4x4 kernel taps). Not applied by BetaVAE: PyTorch's
    default init (variance 1 / (3 fan_in)) keeps fewer latents active and, after 2 epochs at
    β = 4 (one seed), had the higher mean of MIG and FactorVAE (README, "The recipe"), while
    under Burgess' capacity objective (γ = 1000) its encoder's ReLUs die and this init's do not;
    train.py --init he applies this one."""
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
    def __init__(self, latent_dim=10, channels=1):
        super().__init__()
        # Constructor arguments: checkpoints store them, so BetaVAE(**config) rebuilds the model.
        self.config = {"latent_dim": latent_dim, "channels": channels}
        self.latent_dim = latent_dim
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
            nn.Linear(256, 2 * latent_dim),  # B, 2*latent: mu and log sigma^2
        )
        # Decoder: the mirror image, ending in logits for every pixel.
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, 256), nn.ReLU(inplace=True),  # B, 256
            nn.Linear(256, 256), nn.ReLU(inplace=True),  # B, 256
            nn.Linear(256, 512), nn.ReLU(inplace=True),  # B, 512
            nn.Unflatten(1, (32, 4, 4)),  # B, 32, 4, 4
            nn.ConvTranspose2d(32, 32, 4, 2, 1), nn.ReLU(inplace=True),  # B, 32, 8, 8
            nn.ConvTranspose2d(32, 32, 4, 2, 1), nn.ReLU(inplace=True),  # B, 32, 16, 16
            nn.ConvTranspose2d(32, 32, 4, 2, 1), nn.ReLU(inplace=True),  # B, 32, 32, 32
            nn.ConvTranspose2d(32, channels, 4, 2, 1),  # B, C, 64, 64: logits
        )

    def encode(self, x):
        """x: (B, C, 64, 64) in [0, 1] -> mu, logvar, each (B, latent_dim)."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def reparameterize(self, mu, logvar):
        """z = mu + sigma * eps, eps ~ N(0, I) (Kingma & Welling 2014, eq. 10); mu in eval mode."""
        if not self.training:
            return mu
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def decode(self, z):
        """z: (B, latent_dim) -> logits (B, C, 64, 64)."""
        return self.decoder(z)

    def forward(self, x):
        """x -> (logits, mu, logvar)."""
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar


if __name__ == "__main__":
    model = BetaVAE()
    print(model)
    print(f"{sum(p.numel() for p in model.parameters()):,} parameters")
