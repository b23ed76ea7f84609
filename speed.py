"""Speed settings for training: applied by train.py and bench.py to the stock model of model.py.

    python speed.py        # checks the CPU transposed convolution against the stock layer

None of this changes the math: the same weights give the same losses (to float rounding), and
the state dict keeps its keys, so checkpoints load into a plain model.py.

- CPU: flush-to-zero. A trained decoder puts background pixels at logits far below zero, so
  their BCE gradients σ(f) − x fall under 1.2e-38 (denormal floats), and the Adam moments of
  quiet weights decay there too; Intel cores take a slow path on every such number, and the
  transposed convolutions' backward pass ran three times slower than on fresh weights. Values
  that small are set to zero instead.
- CPU: glibc gives each freed block over 128 KB back to the OS, so every step page-faults its
  activations in anew; larger heap thresholds keep them.
- CPU: oneDNN is slow at two parts of the 4x4, stride-2 transposed convolutions: a backward pass
  asked for the bias gradient as well, and a forward pass with one output channel (the logits).
  `up_conv` takes the bias gradient as a sum and writes the one-channel forward out as a matmul
  and an overlap-add.
- channels_last lets oneDNN (CPU) and cuDNN (GPU) pick their fast convolution kernels.
- Fused Adam updates every parameter in one kernel instead of ~10 per parameter tensor.
- CUDA: the shapes never change, so cuDNN times its kernels once and keeps the fastest.
BENCHMARKS.md has the measurements behind each.
"""
import ctypes
import types

import torch
from torch import nn

# mallopt's parameter numbers, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def process_settings():
    """Process-wide settings: flush-to-zero, cuDNN's kernel search and the heap thresholds
    (glibc only). Call first, before any CPU op runs on several threads: the worker threads
    take the flush-to-zero flag from the thread that starts them, once."""
    torch.set_flush_denormal(True)
    torch.backends.cudnn.benchmark = True  # no effect without a GPU
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)  # blocks below 32 MB come from the heap
    libc.mallopt(M_TRIM_THRESHOLD, 256 << 20)  # keep up to 256 MB of freed heap


class _UpConv(torch.autograd.Function):
    """conv_transpose2d(x, weight, bias, stride=2, padding=1) for 4x4 kernels, on CPU."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        B, C, h, w = x.shape
        c_out = weight.shape[1]
        if c_out > 1:  # oneDNN's own forward
            return nn.functional.conv_transpose2d(x, weight, bias, stride=2, padding=1)
        # Each input pixel's channels map to a 4x4 patch per output channel; the patch of pixel
        # (i, j) adds to output rows 2i-1..2i+2, columns 2j-1..2j+2 (padding 1 crops the border).
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


def up_conv(layer, x):
    """The forward of a ConvTranspose2d(c_in, c_out, 4, 2, 1): _UpConv on CPU in fp32, the stock
    layer elsewhere (GPU, or CPU autocast with its bf16 inputs and fp32 weights)."""
    if x.device.type != "cpu" or torch.is_autocast_enabled("cpu"):
        return nn.ConvTranspose2d.forward(layer, x)
    return _UpConv.apply(x, layer.weight, layer.bias)


def fast_model(model, device):
    """The model on `device` in channels_last, its ConvTranspose2d(c_in, c_out, 4, 2, 1) layers
    (with bias, no groups, dilation or output padding: what up_conv computes) running through
    up_conv; other layers stay stock. Same parameters and state dict; returns the model."""
    for m in model.modules():
        if (isinstance(m, nn.ConvTranspose2d) and m.kernel_size == (4, 4)
                and m.stride == (2, 2) and m.padding == (1, 1) and m.groups == 1
                and m.dilation == (1, 1) and m.output_padding == (0, 0) and m.bias is not None):
            m.forward = types.MethodType(up_conv, m)
    return model.to(device, memory_format=torch.channels_last)


def adam(model, lr, device, betas=(0.9, 0.999)):
    """Adam, fused into one kernel on CPU and CUDA (the foreach version elsewhere)."""
    return torch.optim.Adam(model.parameters(), lr=lr, betas=betas,
                            fused=device.type in ("cpu", "cuda"))


if __name__ == "__main__":
    layer = nn.ConvTranspose2d(32, 1, 4, 2, 1)
    x = torch.randn(8, 32, 32, 32)
    stock = layer(x)
    fast = fast_model(layer, torch.device("cpu"))(x)
    print(f"max |up_conv - ConvTranspose2d| = {(fast - stock).abs().max():.2e}")
