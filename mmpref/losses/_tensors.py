"""Shape checks and compute-dtype rules shared by the loss functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# A finite stand-in for -inf when masking scores before a (log-)softmax: exp(_MASK_FILL - max) is exactly 0 in
# float32 and float64, and unlike -inf it never produces inf - inf = NaN in a forward or backward pass.
MASK_FILL = -1e30


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype a loss is computed and returned in.

    Float32/float64 inputs keep their (promoted) dtype. Float16/bfloat16 inputs are computed in float32 and the loss
    is returned in float32, as ``torch.autocast`` does for losses: an unreduced loss such as IPO's square of a large
    margin would otherwise overflow float16's range (65,504). Gradients still flow back in the inputs' dtype.
    """
    dtype = tensors[0].dtype
    for tensor in tensors[1:]:
        dtype = torch.promote_types(dtype, tensor.dtype)
    if not dtype.is_floating_point:
        raise TypeError(f"scores must be floating point tensors, got {dtype}")
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return dtype


def check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Raise a ``ValueError`` naming both shapes when two score tensors differ in shape."""
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}; "
            "pass one score per candidate with matching shapes (pairs: [B] and [B])"
        )


def check_positive(name: str, value: float) -> None:
    """Raise a ``ValueError`` when a temperature-like constant is not strictly positive."""
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + eˣ), exact at every magnitude.

    ``torch.nn.functional.softplus`` returns x itself above its threshold (20), an absolute error of up to e^−20 ≈
    2e-9 that float64 oracle tests see; −log σ(−x) has no such cut and costs the same.
    """
    return -F.logsigmoid(-x)
