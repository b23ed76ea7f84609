"""speed.py against stock PyTorch: up_conv is ConvTranspose2d, fast_model is the same model.

    python -m pytest -q test_speed.py
"""
import copy
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import speed
from loss import beta_vae_loss
from model import BetaVAE

CPU = torch.device("cpu")
HERE = Path(__file__).resolve().parent


def count_upconv_calls(monkeypatch):
    """Calls of speed._UpConv.apply, which still run it: a list that grows by one per call."""
    calls, apply = [], speed._UpConv.apply
    monkeypatch.setattr(speed._UpConv, "apply", lambda *a: calls.append(a) or apply(*a))
    return calls


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("c_out", [1, 3, 32])
def test_upconv_is_a_transposed_conv(c_out, layout, monkeypatch):
    """up_conv's forward (overlap-add for one output channel, oneDNN otherwise) and its backward
    (bias gradient as a sum) against F.conv_transpose2d."""
    calls = count_upconv_calls(monkeypatch)
    torch.manual_seed(0)
    layer = speed.fast_model(nn.ConvTranspose2d(32, c_out, 4, 2, 1), CPU)
    x = torch.randn(3, 32, 16, 16).to(memory_format=layout).requires_grad_()
    grad = torch.randn(3, c_out, 32, 32)
    ours = layer(x)
    assert len(calls) == 1  # the written-out layer, not the stock one
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
    """Elsewhere up_conv is nn.ConvTranspose2d itself: on another device ("meta" stands in for
    CUDA here) and under CPU autocast, where the written-out forward would mix dtypes."""
    calls = []
    monkeypatch.setattr(speed._UpConv, "apply", lambda *a: calls.append(a) or F.conv_transpose2d(
        *a, stride=2, padding=1))
    layer = speed.fast_model(nn.ConvTranspose2d(32, 1, 4, 2, 1), CPU)
    x = torch.randn(2, 32, 32, 32)
    layer(x)
    assert len(calls) == 1  # fp32 on the CPU: the written-out layer
    assert layer.to("meta")(x.to("meta")).shape == (2, 1, 64, 64)
    assert len(calls) == 1
    layer = speed.fast_model(nn.ConvTranspose2d(32, 1, 4, 2, 1), CPU)
    with torch.autocast("cpu", torch.bfloat16):
        y = layer(x)
        ref = F.conv_transpose2d(x, layer.weight, layer.bias, stride=2, padding=1)
    assert y.dtype == torch.bfloat16 and torch.equal(y, ref)
    assert len(calls) == 1


@pytest.mark.parametrize("kwargs", [{"bias": False}, {"groups": 2}, {"dilation": 2},
                                    {"output_padding": 1}])
def test_fast_model_leaves_other_transposed_convs_stock(kwargs, monkeypatch):
    """A 4x4 stride-2 transposed conv that up_conv does not compute (no bias, groups, dilation,
    output padding) keeps the stock forward and output: a model with one still trains."""
    calls = count_upconv_calls(monkeypatch)
    torch.manual_seed(0)
    layer = nn.ConvTranspose2d(32, 4, 4, 2, 1, **kwargs)
    x = torch.randn(2, 32, 8, 8)
    ref = layer(x)
    fast = speed.fast_model(layer, CPU)
    torch.testing.assert_close(fast(x.to(memory_format=torch.channels_last)), ref,
                               rtol=1e-5, atol=1e-5)
    assert calls == []


def test_fast_model_is_the_same_model(monkeypatch):
    """fast_model keeps the parameters and state dict, and computes the same logits and
    gradients as the plain model, through up_conv in exactly its 4 transposed convs."""
    torch.manual_seed(0)
    plain = BetaVAE()
    fast = speed.fast_model(copy.deepcopy(plain), CPU)
    swapped = [name for name, m in fast.named_modules()
               if isinstance(m.forward, types.MethodType) and m.forward.__func__ is speed.up_conv]
    assert swapped == [f"decoder.{i}" for i in (7, 9, 11, 13)]  # the 4 ConvTranspose2d
    assert all(p.is_contiguous(memory_format=torch.channels_last)
               for p in fast.parameters() if p.dim() == 4)

    state = fast.state_dict()
    assert list(state) == list(plain.state_dict())
    for k, v in plain.state_dict().items():
        assert torch.equal(state[k], v), k
    loaded = BetaVAE()
    loaded.load_state_dict(state)  # strict: a checkpoint of the fast model loads into model.py
    for k, v in loaded.state_dict().items():
        assert torch.equal(state[k], v), k

    calls = count_upconv_calls(monkeypatch)
    x = (torch.rand(4, 1, 64, 64) > 0.7).float()
    outputs, grads = [], []
    for m in (plain, fast):
        torch.manual_seed(1)  # the same noise ε in both reparameterizations
        logits, mu, logvar = m(x)
        beta_vae_loss(logits, x, mu, logvar)["loss"].backward()
        outputs.append((logits, mu, logvar))
        grads.append({k: p.grad for k, p in m.named_parameters()})
    assert len(calls) == 4  # the fast model's 4 transposed convs, the plain model's none
    for ours, ref in zip(outputs[1], outputs[0]):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert grads[1].keys() == grads[0].keys()
    for k, ref in grads[0].items():
        # Summed in another order (channels_last, overlap-add): fp32 rounding, measured at up to
        # 1.1e-6 of the largest entry of a gradient (encoder.2.weight).
        torch.testing.assert_close(grads[1][k], ref, rtol=1e-4,
                                   atol=1e-5 * ref.abs().max().item(),
                                   msg=lambda m: f"{k}: {m}")


@pytest.mark.parametrize("setup, flushed", [
    ("", False),  # control: without the setting the product is a denormal, 1e-40
    ("torch.ones(1 << 22).sum(); speed.process_settings()", False),  # workers already started
    ("speed.process_settings()", True),
    ("import train; train.main(['--max-steps', '1', '--batch-size', '8', '--out', sys.argv[1]])",
     True),  # train.py sets it before its first multi-threaded op,
    ("import train; train.main(['--resume', sys.argv[1], '--max-steps', '2'])", True),  # resuming too
])
def test_flush_to_zero_reaches_every_worker_thread(setup, flushed, tmp_path):
    """Denormal floats are flushed to zero on all threads of a 2-thread elementwise product, in a
    fresh interpreter: the worker threads copy the flag only when they start."""
    if not torch.set_flush_denormal(False):  # (this process keeps the default: off)
        pytest.skip("this CPU cannot flush denormals to zero")
    run = tmp_path / "run"
    if "--resume" in setup:  # a run to resume, written by another process
        subprocess.run([sys.executable, "train.py", "--max-steps", "1", "--batch-size", "8",
                        "--out", str(run)], cwd=HERE, capture_output=True, check=True, timeout=300)
    code = (f"import sys, torch, speed; torch.set_num_threads(2); {setup}\n"
            "print(int((torch.full((1 << 22,), 1e-30) * 1e-10 != 0).sum()))")
    out = subprocess.run([sys.executable, "-c", code, str(run)], cwd=HERE,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    nonzero = int(out.stdout.split()[-1])
    assert (nonzero == 0) if flushed else (nonzero > 0)
