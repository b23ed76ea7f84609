"""The model: shapes, init, sampling, ReLUs, circle latents."""
import copy
import math

import pytest
import torch
from torch import nn

from loss import beta_vae_loss
from model import BetaVAE, init_weights


def fan_in(layer, shape):
    """Inputs summed into one interior output, counted from the layer itself: with all weights
    1, the input gradient of one output element is 1 exactly where that output reads."""
    layer = copy.deepcopy(layer)
    nn.init.ones_(layer.weight)
    x = torch.zeros(shape, requires_grad=True)
    y = layer(x)
    y[(0,) * (y.ndim - 2) + tuple(s // 2 for s in y.shape[-2:])].backward()
    return int((x.grad != 0).sum())


def test_init_is_he_for_every_layer():
    """Weight variance 2 / fan_in (He et al. 2015), biases zero, fan_in counted independently:
    in·16 for a 4x4 conv, in for a linear layer, in·4 for a stride-2 transposed conv."""
    torch.manual_seed(0)
    model = BetaVAE()
    init_weights(model)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d,
                                                           nn.Linear))]
    assert len(layers) == 14
    for m in layers:
        shape = (1, m.in_features) if isinstance(m, nn.Linear) else (1, m.in_channels, 8, 8)
        n = fan_in(m, shape)
        assert n == {nn.Conv2d: 16, nn.Linear: 1, nn.ConvTranspose2d: 4}[type(m)] * (
            m.in_features if isinstance(m, nn.Linear) else m.in_channels)
        var = m.weight.var().item()
        tol = 4 / m.weight.numel() ** 0.5  # ~4 standard errors of a variance estimate
        assert abs(var * n / 2 - 1) < tol, (m, var, 2 / n)
        assert m.weight.abs().max() <= (6 / n) ** 0.5 and torch.equal(m.bias, 0 * m.bias)


def test_reparameterize_samples_n_mu_sigma():
    """z = μ + σ ε with σ = exp(½ log σ²): the samples' mean is μ and their std σ."""
    torch.manual_seed(0)
    model = BetaVAE(latent_dim=3).train()
    mu = torch.tensor([[0.5, -2.0, 0.0]]).expand(200_000, 3)
    logvar = torch.tensor([[0.0, 2.0, -3.0]]).expand(200_000, 3)
    z = model.reparameterize(mu, logvar)
    torch.testing.assert_close(z.mean(0), mu[0], atol=0.02, rtol=0)
    torch.testing.assert_close(z.std(0), (0.5 * logvar[0]).exp(), atol=0, rtol=0.01)


def test_model_shapes_and_eval_mean():
    model = BetaVAE(latent_dim=6, channels=1)
    x = torch.rand(5, 1, 64, 64)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (5, 6)
    assert model.decode(mu).shape == (5, 1, 64, 64)
    logits, mu2, _ = model(x)
    assert logits.shape == (5, 1, 64, 64) and torch.equal(mu, mu2)
    model.train()
    assert not torch.equal(model.reparameterize(mu, logvar), mu)
    model.eval()
    assert torch.equal(model.reparameterize(mu, logvar), mu)
    assert BetaVAE(**model.config).config == {"latent_dim": 6, "channels": 1}
    assert BetaVAE(channels=3).decode(torch.zeros(1, 10)).shape == (1, 3, 64, 64)


def test_inplace_relus_change_nothing_but_memory():
    """model.py's ReLUs overwrite their input: the same loss and gradients as ReLUs that copy,
    and the caller's images are left as they were."""
    torch.manual_seed(0)
    ours = BetaVAE()
    copying = copy.deepcopy(ours)
    relus = [m for m in copying.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 12 and all(m.inplace for m in relus)
    for m in relus:
        m.inplace = False
    x = (torch.rand(4, 1, 64, 64) > 0.7).float()
    x_before = x.clone()
    losses = []
    for net in (ours, copying):
        torch.manual_seed(1)  # the same noise ε
        logits, mu, logvar = net(x)
        losses.append(beta_vae_loss(logits, x, mu, logvar)["loss"])
        losses[-1].backward()
    assert torch.equal(x, x_before)
    assert torch.equal(losses[0], losses[1])
    for a, b in zip(ours.parameters(), copying.parameters()):
        assert torch.equal(a.grad, b.grad)


def test_no_circles_is_the_papers_model_parameter_for_parameter():
    """circles=0: the layers, shapes and config of the Gaussian model, so checkpoints of it load
    as they are; circles=C: the encoder gives 3 numbers per circle, the decoder reads 2."""
    shapes = {k: tuple(v.shape) for k, v in BetaVAE().state_dict().items()}
    assert shapes["encoder.13.weight"] == (20, 256) and shapes["decoder.0.weight"] == (256, 10)
    assert sum(v.numel() for v in BetaVAE().parameters()) == 502_005
    assert BetaVAE(circles=0).config == {"latent_dim": 10, "channels": 1}
    circ = BetaVAE(latent_dim=10, circles=2)
    assert circ.config == {"latent_dim": 10, "channels": 1, "circles": 2}
    assert circ.encoder[-1].out_features == 2 * 8 + 3 * 2 and circ.decoder[0].in_features == 8 + 4
    assert {k: tuple(v.shape) for k, v in BetaVAE(**circ.config).state_dict().items()} == {
        k: tuple(v.shape) for k, v in circ.state_dict().items()}
    for bad in (-1, 11):
        with pytest.raises(ValueError, match="circles must be between 0 and latent_dim"):
            BetaVAE(circles=bad)


def test_a_circle_is_read_as_its_angle():
    """encode gives a circle's mean angle, atan2 of its direction, and log κ; decode reads the
    circle through (cos φ, sin φ): a full turn decodes the same image, a half turn does not."""
    torch.manual_seed(0)
    model = BetaVAE(latent_dim=4, circles=1).eval()
    x = torch.rand(3, 1, 64, 64)
    mu, logvar = model.encode(x)
    head = model.encoder(x)
    torch.testing.assert_close(mu[:, 0], torch.atan2(head[:, 1], head[:, 0]))
    torch.testing.assert_close(logvar[:, 0], head[:, 2])
    torch.testing.assert_close(mu[:, 1:], head[:, 3:6])
    torch.testing.assert_close(logvar[:, 1:], head[:, 6:])
    turned = mu.clone()
    turned[:, 0] += 2 * math.pi
    torch.testing.assert_close(model.decode(turned), model.decode(mu), atol=1e-4, rtol=0)
    turned[:, 0] -= math.pi
    assert (model.decode(turned) - model.decode(mu)).abs().max() > 1e-3
    assert torch.equal(model.reparameterize(mu, logvar), mu)  # eval: the mean angle
