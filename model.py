"""The β-VAE of Burgess et al. 2018 ("Understanding disentangling in β-VAE"), for 64x64 images.

    python model.py        # prints the layers and parameter count

Depends on torch alone: copy this file into your own project. The decoder returns logits of a
Bernoulli distribution per pixel; pair it with loss.py.
"""
import torch
from torch import nn


class _UpConv(torch.autograd.Function):
    """conv_transpose2d(x, weight, bias, stride=2, padding=1) for 4x4 kernels on CPU, with two
    workarounds for oneDNN (timed in PyTorch 2.13 at batch 64 on 2 cores); same result.

    Backward: asked for the bias gradient as well, oneDNN's transposed-convolution backward takes
    21 ms instead of 14 for the 16 -> 32 pixel layer; here the bias gradient is a sum (0.2 ms).
    Forward with one output channel (the last layer): oneDNN runs it at ~7 GFLOP/s, 10 ms, a
    tenth of its rate for the other layers. Written out it is a matmul and an overlap-add, 4 ms
    (with 3 output channels both take 11 ms, so only one channel takes this path): each input
    pixel's channels map to a 4x4 patch per output channel (weight: C_in, C_out, 4, 4), and the
    patch of input pixel (i, j) is added to the output at rows 2i-1..2i+2, columns 2j-1..2j+2
    (padding 1 crops the border). The figures are from 2 AVX2 cores; on 2 AVX-512 cores (Zen 4)
    the last layer's forward is 6.4 ms stock against 1.8 here, the 16 -> 32 layer's forward and
    backward 12.1 against 11.3 ms.
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        B, C, h, w = x.shape
        c_out = weight.shape[1]
        if c_out > 1:  # oneDNN's own forward
            return nn.functional.conv_transpose2d(x, weight, bias, stride=2, padding=1)
        pixels = x.permute(0, 2, 3, 1).reshape(-1, C)  # B*h*w, C_in (a view in channels_last)
        patches = (pixels @ weight.reshape(C, -1)).view(B, h, w, c_out, 4, 4)  # one per pixel
        out = x.new_zeros(B, 2 * h + 2, 2 * w + 2, c_out)  # B, 2h+2, 2w+2, C_out: with the border
        for ky in range(4):
            for kx in range(4):  # strided slices: no two pixels of one (ky, kx) overlap
                out[:, ky:ky + 2 * h:2, kx:kx + 2 * w:2] += patches[..., ky, kx]
        return (out[:, 1:-1, 1:-1] + bias).permute(0, 3, 1, 2)  # B, C_out, 2h, 2w (channels_last)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x, grad_weight, _ = torch.ops.aten.convolution_backward(
            grad, x, weight, None, stride=[2, 2], padding=[1, 1], dilation=[1, 1],
            transposed=True, output_padding=[0, 0], groups=1, output_mask=[True, True, False])
        return grad_x, grad_weight, grad.sum((0, 2, 3))


class UpConv(nn.ConvTranspose2d):
    """ConvTranspose2d(in_channels, out_channels, 4, 2, 1): doubles height and width. Same
    parameters and result as the stock layer; on CPU it runs as _UpConv, which works around two
    slow paths of oneDNN (together ~15 of the ~100 ms of a batch-64 training step on 2 cores).
    """

    def __init__(self, in_channels, out_channels):
        super().__init__(in_channels, out_channels, 4, 2, 1)

    def forward(self, x):
        # Off the CPU, and under CPU autocast (bf16 inputs, fp32 weights): the stock layer.
        if x.device.type != "cpu" or torch.is_autocast_enabled("cpu"):
            return super().forward(x)
        return _UpConv.apply(x, self.weight, self.bias)


def init_weights(model):
    """He et al. 2015 ("Delving deep into rectifiers", eq. 10) for every conv and linear layer:
    weights uniform with variance 2 / fan_in, biases zero. fan_in counts the inputs summed into
    one output: in·k·k for a conv, in for a linear layer, in·k·k / stride² for a transposed
    conv (each output pixel meets 2x2 of its 4x4 kernel taps). PyTorch's default, variance
    1 / (3 fan_in), shrinks the signal at each of the 12 ReLU layers: the untrained decoder draws
    the mean image, and β·KL switches latents off before they carry anything."""
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
            UpConv(32, 32), nn.ReLU(inplace=True),  # B, 32, 8, 8
            UpConv(32, 32), nn.ReLU(inplace=True),  # B, 32, 16, 16
            UpConv(32, 32), nn.ReLU(inplace=True),  # B, 32, 32, 32
            UpConv(32, channels),  # B, C, 64, 64: logits
        )

        init_weights(self)

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
