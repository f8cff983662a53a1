"""The dynamic MLP of NRD (Zhang, Liu, Tian, Shen, NeurIPS 2021, Sec. 3).

Every controller location owns a compact MLP whose weights are ``P`` channels of the
controller's output. This module holds what defines those MLPs, independent of the head:

* :func:`dynamic_param_layout` / :func:`num_dynamic_params`: how the ``P`` channels split into
  weights and biases (the authors' order);
* :func:`relative_coordinates`: the coordinates inside an ``r x r`` patch (optionally Fourier
  features), the first MLP inputs;
* :class:`DynamicMLP`: all per-location MLPs applied to their patches with batched matmuls;
* :func:`autocast_off`: the float32 region of the NRD decode under mixed precision.
"""

import contextlib
import math
from typing import List, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "DynamicMLP",
    "autocast_off",
    "dynamic_param_layout",
    "num_dynamic_params",
    "relative_coordinates",
]


def autocast_off(tensor: torch.Tensor):
    """A block where autocast is off for ``tensor``'s device type (a no-op when autocast is not
    on): its operations run in the dtype of their inputs, which the caller makes float32.

    NRD's dynamic weights start near ``1 / P`` (the authors' init), so the within-patch detail
    the MLP adds is orders of magnitude below the logits; float16/bfloat16 rounding of the MLP's
    sums (and float16 underflow of its gradients) would erase it. The decode therefore runs in
    float32 under autocast (``NRDHead.layers``)."""
    device_type = tensor.device.type
    if device_type in ("cuda", "cpu") and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def dynamic_param_layout(channels: Sequence[int]) -> List[Tuple[str, Tuple[int, ...]]]:
    """Layout of the ``P`` controller channels that parameterise one dynamic MLP.

    Args:
        channels: widths of the MLP, ``[C_in, H, ..., K]`` (NRD default ``[2 + G, H, H, K]``).

    Returns:
        ``[("weight0", (C_1, C_0)), ("bias0", (C_1,)), ("weight1", (C_2, C_1)), ...]`` in channel
        order: layer ``l`` takes ``C_l * C_{l-1}`` channels for its weight stored
        out-major (``weight[o, i]`` is channel ``offset + o * C_in_l + i``), then ``C_l`` bias
        channels. This is the split order of the authors' code.
    """
    if len(channels) < 2:
        raise ValueError(f"A dynamic MLP needs at least input and output widths, got {channels}.")
    layout = []
    for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:])):
        layout.append((f"weight{i}", (c_out, c_in)))
        layout.append((f"bias{i}", (c_out,)))
    return layout


def num_dynamic_params(channels: Sequence[int]) -> int:
    """``P = sum_l C_l * C_{l-1} + C_l``: 899 for ``[18, 16, 16, 19]``, 3126 for K = 150."""
    return sum(math.prod(shape) for _, shape in dynamic_param_layout(channels))


def relative_coordinates(patch_size: int, num_frequencies: int = 0) -> torch.Tensor:
    """Relative coordinates of the pixels inside an ``r x r`` patch (paper Sec. 3).

    Returns:
        Tensor[2 + 4F, r, r]: channel 0 is ``x = j / r`` and channel 1 is ``y = i / r`` for the
        pixel in row ``i``, column ``j`` (values ``0, 1/r, ..., (r-1)/r``). With ``F > 0``
        Fourier frequencies, ``sin(2^k pi x), cos(2^k pi x), sin(2^k pi y), cos(2^k pi y)`` for
        ``k = 0 .. F-1`` follow.
    """
    r = patch_size
    steps = torch.arange(r, dtype=torch.float32) / r
    y, x = torch.meshgrid(steps, steps, indexing="ij")
    coords = [x, y]
    for k in range(num_frequencies):
        for c in (x, y):
            coords.append(torch.sin((2.0**k) * math.pi * c))
            coords.append(torch.cos((2.0**k) * math.pi * c))
    return torch.stack(coords, dim=0)


class DynamicMLP(nn.Module):
    """Per-location MLPs applied to their own patches (paper Sec. 3).

    Location ``(n, i, j)`` owns the MLP whose weights are ``params[n, :, i, j]`` (layout:
    :func:`dynamic_param_layout`); it maps each of its ``r^2`` pixel inputs through
    ``Linear -> ReLU -> ... -> Linear`` (no activation after the last layer). Implemented as
    batched matmuls ``[N, h, w, r^2, C_l] @ [N, h, w, C_l, C_{l+1}]``: no weight tensor is ever
    expanded to the output grid. Cost: ``N h w r^2 sum_l C_l C_{l+1}`` multiply-adds.

    Shapes: ``inputs [N, h, w, r^2, C_0]``, ``params [N, P, h, w]`` -> ``[N, h, w, r^2, C_L]``.
    """

    def __init__(self, channels: Sequence[int]):
        super().__init__()
        self.channels = list(channels)
        self.layout = dynamic_param_layout(self.channels)
        self.num_params = num_dynamic_params(self.channels)

    def split_params(self, params: torch.Tensor) -> List[torch.Tensor]:
        """Split ``[N, P, h, w]`` into, per layer, ``weight [N, h, w, C_out, C_in]`` and
        ``bias [N, h, w, C_out]`` (at controller resolution, never expanded to the output grid)."""
        if params.shape[1] != self.num_params:
            raise ValueError(
                f"Expected {self.num_params} dynamic parameters, got {params.shape[1]}."
            )
        n, _, h, w = params.shape
        params = params.permute(0, 2, 3, 1)
        sizes = [math.prod(shape) for _, shape in self.layout]
        chunks = torch.split(params, sizes, dim=-1)
        return [c.reshape(n, h, w, *shape) for c, (_, shape) in zip(chunks, self.layout)]

    def forward(self, inputs: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        tensors = self.split_params(params)
        x = inputs
        num_layers = len(self.channels) - 1
        for i in range(num_layers):
            weight, bias = tensors[2 * i], tensors[2 * i + 1]
            x = torch.matmul(x, weight.transpose(-1, -2)) + bias.unsqueeze(-2)
            if i < num_layers - 1:
                x = F.relu(x)
        return x
