"""fp32 linear layers on CPU through oneDNN instead of the BLAS that ``F.linear`` calls.

PyTorch's CPU build sends fp32 ``F.linear`` to MKL's sgemm. On AMD CPUs MKL does not pick its
fastest kernels, while oneDNN (also inside PyTorch, used by its own inference fusions) generates
AVX2/AVX-512 code for whatever CPU it finds. On a 2-core AMD EPYC (AVX2) oneDNN ran the
learner's shapes 20-35% faster in the forward and the input-gradient products; the
weight-gradient product (``grad_out^T @ input``) is as fast or faster in MKL, so it stays there.

The maths is the same fp32 matrix product (results differ only by summation order, ~1e-6
relative); parameters, state dicts, FSDP2 sharding and checkpoints are untouched: only the
class of each ``nn.Linear`` changes, and non-fp32 or non-CPU inputs fall back to ``F.linear``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

CHOICES = ("auto", "onednn", "torch")


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    # The fused op PyTorch's inductor uses for CPU linears; "none" = no fused activation.
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _OneDNNLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            # grad_out @ W, as a linear layer whose weight is W^T (a strided view, no copy).
            grad_x = _onednn(grad_out, weight.t(), None)
        flat_grad = grad_out.reshape(-1, grad_out.shape[-1])
        if ctx.needs_input_grad[1]:
            grad_w = flat_grad.t() @ x.reshape(-1, x.shape[-1])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = flat_grad.sum(0)
        return grad_x, grad_w, grad_b


class OneDNNLinear(torch.nn.Linear):
    """``nn.Linear`` whose fp32 CPU products run in oneDNN (same parameters, same maths)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if x.device.type != "cpu" or x.dtype != torch.float32 or w.dtype != torch.float32:
            return F.linear(x, w, self.bias)
        return _OneDNNLinearFn.apply(x, w, self.bias)


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@functools.lru_cache(maxsize=1)
def cpu_vendor() -> str:
    """``vendor_id`` from ``/proc/cpuinfo`` (``AuthenticAMD``, ``GenuineIntel``), or ``""``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def resolve(choice: str) -> str:
    """``onednn`` or ``torch`` for a config's ``learner.cpu_linear``.

    ``auto`` takes oneDNN only where it was measured faster (AMD); on Intel CPUs MKL is the
    vendor's own library, and without oneDNN in the build there is nothing to choose.
    """
    if choice not in CHOICES:
        raise ValueError(f"learner.cpu_linear must be one of {CHOICES}, got {choice!r}")
    if choice == "onednn" and not onednn_available():
        raise ValueError(
            "learner.cpu_linear='onednn' but this PyTorch build has no oneDNN linear "
            "(torch.ops.mkldnn._linear_pointwise); use 'torch' or 'auto'"
        )
    if choice == "auto":
        return "onednn" if onednn_available() and cpu_vendor() == "AuthenticAMD" else "torch"
    return choice


def use_onednn(model: torch.nn.Module) -> int:
    """Turn every plain ``nn.Linear`` of ``model`` into :class:`OneDNNLinear`; returns how many."""
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = OneDNNLinear
            count += 1
    return count
