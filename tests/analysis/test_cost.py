"""nrd_rsp.analysis.cost.step_flops: FLOPs of a measured step against formulas."""

import torch
from torch import nn

from nrd_rsp.analysis import step_flops
from nrd_rsp.modeling.rsp import RSE


def test_training_step_of_a_convolution_counts_forward_and_both_gradients():
    """A 3x3 convolution: 2 C_in C_out 9 H W FLOPs forward; backward adds the same again for
    the weight gradient and, when the input needs one, for the input gradient."""
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    forward = 2 * 4 * 6 * 9 * 10 * 12
    for input_grad, passes in ((False, 2), (True, 3)):
        x = torch.randn(2, 4, 10, 12, requires_grad=input_grad)
        assert step_flops(lambda: conv(x).sum().backward()) == 2 * passes * forward
    with torch.no_grad():
        assert step_flops(lambda: conv(x)) == 2 * forward


def test_rse_is_counted_in_its_plain_ops():
    """RSE inference (docs/RSP.md, Eq. 1-3) in eager mode, where the fused ops run: the count is
    the plain ops' arithmetic, 1x1 projections (queries on the fine map, keys and values on the
    coarse one) plus, per fine pixel and head, k*k dot products of length d for the logits and
    as many multiply-adds for the aggregation."""
    n, cf, cc, c, g, k = 2, 6, 5, 8, 2, 3
    hc, wc = 4, 7
    h, w = 2 * hc, 2 * wc
    rse = RSE(cf, cc, channels=c, num_heads=g, window_size=k)
    fine, coarse = torch.randn(n, cf, h, w), torch.randn(n, cc, hc, wc)
    projections = 2 * n * (cf * c * h * w + 2 * cc * c * hc * wc)
    attention = 2 * 2 * n * h * w * c * k * k  # G d = C
    with torch.no_grad():
        assert step_flops(lambda: rse(fine, coarse)) == projections + attention
