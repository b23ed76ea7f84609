"""The ELBO parts against independent references, and the model: shapes, in-place ReLUs, UpConv."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Bernoulli, Normal, kl_divergence

from loss import beta_vae_loss, capacity, kl_per_dim, reconstruction_loss
import model
from model import BetaVAE, UpConv


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


def test_capacity_rises_linearly_then_holds():
    assert capacity(0, 25, 100) == 0
    assert capacity(50, 25, 100) == 12.5
    assert capacity(100, 25, 100) == capacity(10_000, 25, 100) == 25


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


@pytest.mark.parametrize("c_out", [1, 3, 32])
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_upconv_is_a_transposed_conv(c_out, layout):
    """UpConv's forward (overlap-add for one output channel, oneDNN otherwise) and its backward
    (bias gradient as a sum) against F.conv_transpose2d."""
    torch.manual_seed(0)
    layer = UpConv(32, c_out)
    x = torch.randn(3, 32, 16, 16).to(memory_format=layout).requires_grad_()
    grad = torch.randn(3, c_out, 32, 32)
    ours = layer(x)
    ours.backward(grad)
    got = [x.grad, layer.weight.grad, layer.bias.grad]
    x.grad = layer.weight.grad = layer.bias.grad = None
    ref = F.conv_transpose2d(x, layer.weight, layer.bias, stride=2, padding=1)
    ref.backward(grad)
    assert ours.shape == ref.shape == (3, c_out, 32, 32)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(got, [x.grad, layer.weight.grad, layer.bias.grad]):
        assert g is not None  # sums over 3,072 terms, in another order: fp32 rounding
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


def test_upconv_off_cpu_or_under_autocast_is_the_stock_layer(monkeypatch):
    """Elsewhere UpConv is nn.ConvTranspose2d itself: on another device ("meta" stands in for
    CUDA here) and under CPU autocast, where the written-out forward would mix dtypes."""
    calls = []
    monkeypatch.setattr(model._UpConv, "apply", lambda *a: calls.append(a) or F.conv_transpose2d(
        *a, stride=2, padding=1))
    layer = UpConv(32, 1)
    x = torch.randn(2, 32, 32, 32)
    layer(x)
    assert len(calls) == 1  # fp32 on the CPU: the written-out layer
    assert layer.to("meta")(x.to("meta")).shape == (2, 1, 64, 64)
    layer = UpConv(32, 1)
    with torch.autocast("cpu", torch.bfloat16):
        y = layer(x)
        ref = F.conv_transpose2d(x, layer.weight, layer.bias, stride=2, padding=1)
    assert y.dtype == torch.bfloat16 and torch.equal(y, ref)
    assert len(calls) == 1
