"""Fused forward and backward of the RSE's window attention and of the RSP's projection-sum.

The plain-op RSE (``RSE.forward`` in :mod:`.rsp`) is the reference and what tracing (TorchScript,
ONNX export, fvcore's FLOP count), scripting and ``torch.compile`` see. On CPU its autograd
backward cost about 10x its forward (``benchmarks/results/rsp_profile.md``): the backward of the
k*k-fold window gather zero-fills and adds a padded map per window offset, the tiny per-pixel
batched matmuls and the 1x1 convolutions get their gradients in permuted layouts. The two
:class:`torch.autograd.Function` here compute the same values with hand-written backwards, in
eager training and inference on CPU:

* :func:`window_attention`: ``c = RSE(F, F')`` (docs/RSP.md, Eq. 1-3) from the maps and the
  weights. Queries come from one matmul per image, channels last; keys and values from one per
  coarse row, written into a zero-padded map. A block is one head's T = 8 consecutive coarse
  pixels of a row: its 4T fine pixels are the queries, the k x (T + k - 1) coarse pixels around
  them the keys and values, so the logits and the aggregation are batched matmuls of
  [4T, d] x [d, k (T + k - 1)] whose window entries form a band, read and written through a
  strided view. The softmax is spelled out on the band (float32, float64 for float64 inputs).
  The backward scatters the blocks' key/value gradients back with 2k strided additions.
  Output ``[N, C, H, W]`` with channels-last strides.
* :func:`project_add`: ``F + W_o c`` (Eq. 4) as one matmul-add per image; its backward gives
  the gradient of ``c`` in ``c``'s layout.
* Without autograd, in float32 and where the package was built with its C kernel
  (``csrc/window_attention.c``, :func:`kernel_available`): the attention of every fine pixel and
  head in one pass (its k*k logits, their softmax and the weighted sum), without blocks.

Numerics: the same operations in another order (float rounding apart, the results are the plain
ops'). Under autocast the matmuls run in the autocast dtype and the softmax in float32, as in the
plain ops. Two CPU details change values only below float32's smallest normal number (1.2e-38):
window weights whose exp() would be subnormal are 0 (exp() is many times slower there, and
random weights give logit gaps of 1e6), and the window attention runs with denormals flushed
to zero (training that sharpens the softmax otherwise fills the gradients with denormals, which
CPU arithmetic handles many times slower). ``tests/modeling/test_rsp_gradients.py`` checks values
and gradients against an explicit per-pixel float64 reference, with ``gradcheck``, against the
plain ops under autocast, and that tracing uses the plain ops.
"""

import contextlib
import math
from typing import Optional

import torch
from torch.autograd.function import once_differentiable

try:  # the compiled kernel (setup.py; absent where the package was installed without a compiler)
    from .._window_attention import window_attention as _kernel
except ImportError:
    _kernel = None

__all__ = ["fused_ops_enabled", "kernel_available", "plain_ops", "project_add", "window_attention"]

_BLOCK = 8  # coarse pixels per block (T), at least k - 1
# Smallest arguments whose exp() is a normal number (float32: exp(-87.3), float64: exp(-708.4)).
_EXP_FLOOR = {torch.float32: -87.0, torch.float64: -708.0}
_PLAIN = [False]


def fused_ops_enabled(device: torch.device) -> bool:
    """Whether RSE and RSP use the fused ops for maps on ``device``: on CPU in eager mode. False
    while tracing (TorchScript / ONNX export, fvcore), scripting or compiling and inside
    :func:`plain_ops`, and on other devices: their speed is measured on CPU only (on a GPU the
    per-row matmuls would be many small kernel launches), so CUDA keeps the plain ops."""
    if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return False
    return device.type == "cpu" and not (_PLAIN[0] or torch.compiler.is_compiling())


@contextlib.contextmanager
def plain_ops():
    """RSE and RSP run their plain ops (the reference) inside this context."""
    before, _PLAIN[0] = _PLAIN[0], True
    try:
        yield
    finally:
        _PLAIN[0] = before


@contextlib.contextmanager
def _denormals_flushed(device: torch.device):
    """Flush-to-zero for the ops inside on CPU (the calling thread): where training drives the
    window softmax to weights below 1e-30, products of the weights and gradients fall below
    float32's smallest normal number, and CPU arithmetic on such denormal numbers is many times
    slower. Values below 1.2e-38 (2.2e-308 in float64) become 0; the previous mode is restored."""
    if device.type != "cpu":
        yield
        return
    already = float(torch.tensor([1e-39]) * 2) == 0.0  # a denormal is 0 in flush-to-zero mode
    if already or not torch.set_flush_denormal(True):
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def _autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


class _Geometry:
    """Sizes of one call and the block layout. N images, C = G d channels, fine H x W, coarse
    h' x w', window k = 2r + 1. A block is one head's T consecutive coarse pixels of a row (the
    row padded to wt = nblk T), with their 4T fine pixels as queries, ordered (column, dy, dx),
    and the k x (T + 2r) coarse pixels around them as keys and values (``cols`` of them).
    Blocks are ordered (image, row, block, head): the pixels of a block and of its neighbours in
    the order are close in memory, which keeps the copies to and from blocks cache-friendly."""

    def __init__(self, fine_shape, coarse_shape, channels: int, num_heads: int, window: int):
        self.n, _, self.h, self.w = fine_shape
        self.hc, self.wc = coarse_shape[-2:]
        self.c, self.g, self.k = channels, num_heads, window
        self.d, self.r = channels // num_heads, window // 2
        self.t = max(_BLOCK, 2 * self.r)
        self.nblk = -(-self.wc // self.t)
        self.wt = self.nblk * self.t
        self.hp, self.wp = self.hc + 2 * self.r, self.wt + 2 * self.r  # padded key map
        self.nb = self.n * self.hc * self.nblk * self.g  # number of blocks
        self.kw = self.t + 2 * self.r
        self.cols = self.k * self.kw  # keys of a block
        self.blocks = (self.n, self.hc, self.nblk, self.g)  # what nb is made of

    def band(self, x: torch.Tensor) -> torch.Tensor:
        """[nb, 4T, cols] (a block's queries x its keys) -> view [nb, T, 4, k, k] of the window
        entries: query (t, s) and offset (i, j) at key (i, t + j)."""
        c = self.cols
        return x.as_strided(
            (self.nb, self.t, 4, self.k, self.k),
            (x.stride(0), 4 * c + 1, c, self.kw, 1),
            x.storage_offset(),
        )

    def _pixel_view(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 2h', 2wt, C] -> view [N, h', nblk, G, T, 2, 2, d] in block order."""
        x = x.view(self.n, self.hc, 2, self.nblk, self.t, 2, self.g, self.d)
        return x.permute(0, 1, 3, 6, 4, 2, 5, 7)

    def _exact(self) -> bool:
        return self.h == 2 * self.hc and self.w == 2 * self.wt

    def _like(self, x: torch.Tensor) -> torch.Tensor:
        """Empty [N, 2h', 2wt, C] in the memory layout of ``x`` (channels last or NCHW)."""
        if x.stride(-1) == 1:
            return x.new_empty(self.n, 2 * self.hc, 2 * self.wt, self.c)
        return x.new_empty(self.n, self.c, 2 * self.hc, 2 * self.wt).permute(0, 2, 3, 1)

    def to_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """[N, H, W, C] (any strides) -> [nb, 4T, d], zero where there is no fine pixel."""
        if not self._exact():
            padded = self._like(x).zero_()
            padded[:, : self.h, : self.w] = x
            x = padded
        out = x.new_empty(self.nb, 4 * self.t, self.d)
        out.view(*self.blocks, self.t, 2, 2, self.d).copy_(self._pixel_view(x))
        return out

    def from_blocks(self, xb: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """[nb, 4T, d] -> ``out`` [N, H, W, C] (contiguous), returned."""
        exact = self._exact()
        dst = out if exact else self._like(out)
        self._pixel_view(dst).copy_(xb.view(*self.blocks, self.t, 2, 2, self.d))
        if not exact:
            out.copy_(dst[:, : self.h, : self.w])
        return out

    def padded_key_map(self, dtype, device) -> torch.Tensor:
        """[N, h' + 2r, wt + 2r, G, 2d], zero outside the coarse map (the inside is written
        by the caller)."""
        r = self.r
        out = torch.empty(self.n, self.hp, self.wp, self.g, 2 * self.d, dtype=dtype, device=device)
        out[:, :r].zero_()
        out[:, r + self.hc :].zero_()
        out[:, r : r + self.hc, :r].zero_()
        out[:, r : r + self.hc, r + self.wc :].zero_()
        return out

    def interior(self, kvp: torch.Tensor) -> torch.Tensor:
        """The coarse map [N, h', w', G, 2d] (a view) inside the padded key map."""
        return kvp[:, self.r : self.r + self.hc, self.r : self.r + self.wc]

    def key_blocks(self, kvp: torch.Tensor, rows=None, cols=None) -> torch.Tensor:
        """View [N, h', nblk, G, rows, cols, 2d] of the padded key map: every block's
        k x (T + 2r) keys and values, or the window rows ``rows`` x columns ``cols`` of them."""
        (y0, y1), (x0, x1) = rows or (0, self.k), cols or (0, self.kw)
        s = kvp.stride()
        return kvp.as_strided(
            (*self.blocks, y1 - y0, x1 - x0, 2 * self.d),
            (s[0], s[1], self.t * s[2], s[3], s[1], s[2], 1),
            kvp.storage_offset() + y0 * s[1] + x0 * s[2],
        )

    def outside(self, device) -> torch.Tensor:
        """[h', nblk, 1, T, 1, k k] bool: window positions outside the coarse map (False for the
        padding queries of the last block, which then stay finite)."""
        inside = torch.zeros(self.hp, self.wp, dtype=torch.bool, device=device)
        inside[self.r : self.r + self.hc, self.r : self.r + self.wc] = True
        out = ~inside.unfold(0, self.k, 1).unfold(1, self.k, 1)  # [h', wt, k, k]
        out[:, self.wc :] = False
        return out.reshape(self.hc, self.nblk, 1, self.t, 1, self.k * self.k)


def _channels_last(x: torch.Tensor) -> bool:
    return not x.is_contiguous() and x.permute(0, 2, 3, 1).is_contiguous()


def _flat(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, H W], a view for NCHW and channels-last ``x``."""
    if _channels_last(x):
        return x.permute(0, 2, 3, 1).flatten(1, 2).transpose(1, 2)
    return x.flatten(2)


def _conv1x1(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """1x1 convolution without bias, ``[N, C_in, H, W] -> [N, H W, C_out]`` (channels last),
    a matmul per image (the convolution takes a slower path on CPU for 1x1 kernels and small
    batches)."""
    flat = _flat(x)
    out = x.new_empty(x.shape[0], flat.shape[2], weight.shape[0])
    for i in range(x.shape[0]):
        torch.mm(flat[i].t(), weight.t(), out=out[i])
    return out


def _conv1x1_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, needs):
    """Gradients (input, in the layout of ``x``; weight) of a 1x1 convolution without bias
    from ``grad`` [N, C_out, H W] (any strides); ``needs``: which of the two."""
    flat = _flat(x)
    gin = gw = None
    if needs[0] and _channels_last(x):
        n, c, h, w = x.shape
        gin = grad.new_empty(n, h, w, c)
        gflat = gin.view(n, h * w, c)
        for i in range(n):
            torch.mm(grad[i].t(), weight, out=gflat[i])
        gin = gin.permute(0, 3, 1, 2)
    elif needs[0]:
        gin = grad.new_empty(x.shape)
        gflat = gin.view(flat.shape)
        for i in range(x.shape[0]):
            torch.mm(weight.t(), grad[i], out=gflat[i])
    if needs[1]:
        gw = torch.mm(grad[0], flat[0].t())
        for i in range(1, x.shape[0]):
            gw.addmm_(grad[i], flat[i].t())
    return gin, gw


class _WindowAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fine, coarse, wq, wkv, bias, num_heads: int, window: int, grad: bool):
        with _denormals_flushed(fine.device):
            args = (fine, coarse, wq, wkv, bias, num_heads, window, grad)
            return _WindowAttention._forward(ctx, *args)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        with _denormals_flushed(grad_out.device):
            return _WindowAttention._backward(ctx, grad_out)

    @staticmethod
    def _forward(ctx, fine, coarse, wq, wkv, bias, num_heads: int, window: int, grad: bool):
        geo = _Geometry(fine.shape, coarse.shape, wq.shape[0], num_heads, window)
        d, kk = geo.d, geo.k * geo.k
        q = _conv1x1(fine, wq).view(geo.n, geo.h, geo.w, geo.c)  # already / sqrt(d)
        qb = geo.to_blocks(q)
        # Keys and values (channels: head, key|value, d) written row by row into the padded map.
        kvp = geo.padded_key_map(q.dtype, q.device)
        inside, cflat = geo.interior(kvp), _flat(coarse)
        for i in range(geo.n):
            for y in range(geo.hc):
                rows = cflat[i, :, y * geo.wc : (y + 1) * geo.wc].t()
                torch.mm(rows, wkv.t(), out=inside[i, y].view(geo.wc, 2 * geo.c))
        blocks = geo.key_blocks(kvp)  # [N, h', nblk, G, k, T + 2r, 2d] view
        # Keys and values of every block, each [nb, cols, d] contiguous (batched matmuls are
        # several times slower on the interleaved [.., 2d] rows).
        kb = blocks[..., :d].reshape(geo.nb, geo.cols, d)
        vb = blocks[..., d:].reshape(geo.nb, geo.cols, d)
        del kvp, inside
        scores = torch.bmm(qb, kb.transpose(1, 2))  # [nb, 4T, cols]
        # Softmax in float32 (float64 for float64 inputs), as the plain ops.
        ftype = torch.promote_types(scores.dtype, torch.float32)
        logits = torch.empty(geo.band(scores).shape, dtype=ftype, device=q.device)
        logits.copy_(geo.band(scores))
        flat = logits.view(*geo.blocks, geo.t, 4, kk)
        flat += bias.view(1, 1, 1, geo.g, 1, 4, kk)
        flat.masked_fill_(geo.outside(q.device), float("-inf"))
        flat -= flat.amax(dim=-1, keepdim=True)
        # exp() is many times slower where its result is subnormal or 0 (-inf included; random
        # weights give logit gaps of 1e6): clamp, then those weights are 0 (they are < 2e-38).
        floor = _EXP_FLOOR[flat.dtype]
        weights = flat.clamp_(min=floor).exp_()
        torch.nn.functional.threshold_(weights, math.exp(floor), 0.0)
        weights /= weights.sum(dim=-1, keepdim=True)
        band = scores.zero_()
        geo.band(band).copy_(logits)
        # Without backward, the queries' blocks are free for the output's.
        ob = torch.bmm(band, vb, out=None if grad else qb)
        out = geo.from_blocks(ob, q)  # into q's memory
        ctx.save_for_backward(fine, coarse, wq, wkv, qb, kb, vb, logits)
        ctx.geo = geo
        return out.permute(0, 3, 1, 2)

    @staticmethod
    def _backward(ctx, grad_out):
        fine, coarse, wq, wkv, qb, kb, vb, weights = ctx.saved_tensors
        geo = ctx.geo
        d, kk = geo.d, geo.k * geo.k
        gb = geo.to_blocks(grad_out.permute(0, 2, 3, 1).to(vb.dtype))  # [nb, 4T, d]
        gscores = torch.bmm(gb, vb.transpose(1, 2))  # d out / d weights (banded)
        glogits = torch.empty_like(weights).copy_(geo.band(gscores))
        gflat, wflat = glogits.view(-1, kk), weights.view(-1, kk)
        gflat -= (gflat * wflat).sum(dim=-1, keepdim=True)
        gflat *= wflat  # softmax backward; 0 outside the map
        gbias = glogits.view(*geo.blocks, geo.t, 4, kk).sum(dim=(0, 1, 2, 4))
        band = gscores.zero_()
        geo.band(band).copy_(glogits)
        gqb = torch.bmm(band, kb)
        gkb = torch.bmm(band.transpose(1, 2), qb)
        band.zero_()
        geo.band(band).copy_(weights)
        gvb = torch.bmm(band.transpose(1, 2), gb)
        del band, gb
        # Scatter every block's key/value gradients back to the padded map: per window row, the
        # first T columns of the blocks tile the row, the last 2r overlap the next block.
        gkvp = gkb.new_zeros(geo.n, geo.hp, geo.wp, geo.g, 2 * d)
        shape = (*geo.blocks, geo.k, geo.kw, d)
        gk, gv = gkb.view(shape), gvb.view(shape)
        for i in range(geo.k):
            for x0, x1 in ((0, geo.t), (geo.t, geo.kw)):
                target = geo.key_blocks(gkvp, (i, i + 1), (x0, x1))
                target[..., :d] += gk[:, :, :, :, i : i + 1, x0:x1]
                target[..., d:] += gv[:, :, :, :, i : i + 1, x0:x1]
        del gkb, gvb, gk, gv
        gkv = geo.interior(gkvp).reshape(geo.n, geo.hc * geo.wc, 2 * geo.c)  # one copy
        gq = geo.from_blocks(gqb, gqb.new_empty(geo.n, geo.h, geo.w, geo.c))
        need = ctx.needs_input_grad
        gq = gq.view(geo.n, geo.h * geo.w, geo.c).transpose(1, 2)
        gfine, gwq = _conv1x1_backward(gq, fine, wq, (need[0], need[2]))
        gcoarse, gwkv = _conv1x1_backward(gkv.transpose(1, 2), coarse, wkv, (need[1], need[3]))
        return gfine, gcoarse, gwq, gwkv, gbias if need[4] else None, None, None, None


def kernel_available() -> bool:
    """Whether the compiled kernel (``csrc/window_attention.c``) was built at installation: the
    RSE without autograd then runs its attention there in float32 on CPU, with one intra-op
    thread (``torch.get_num_threads() == 1``; the kernel itself is single-threaded)."""
    return _kernel is not None


def _kernel_forward(fine, coarse, wq, wkv, bias, num_heads: int, window: int) -> torch.Tensor:
    """``c`` [N, C, H, W] (channels-last strides) from the compiled kernel: queries and keys/values
    by one matmul per image, then the window attention in one pass, into the queries' memory."""
    n, _, h, w = fine.shape
    c = wq.shape[0]
    q, kv, bias = _conv1x1(fine, wq), _conv1x1(coarse, wkv), bias.contiguous()
    sizes = (n, h, w, *coarse.shape[-2:], num_heads, c // num_heads, window)
    _kernel(q.data_ptr(), kv.data_ptr(), bias.data_ptr(), q.data_ptr(), *sizes)
    return q.view(n, h, w, c).permute(0, 3, 1, 2)


def window_attention(fine, coarse, wq, wk, wv, bias, num_heads: int, window: int):
    """``c = RSE(fine, coarse)`` (docs/RSP.md, Eq. 1-3), fused forward and backward.

    Args:
        fine: [N, C_f, H, W]; coarse: [N, C_c, h', w'] (``H <= 2h'``, ``W <= 2w'``).
        wq: [C, C_f] query weight, already scaled by 1 / sqrt(d); wk, wv: [C, C_c].
        bias: [G, 4, k*k] relative position bias (``RSE.rel_pos_bias``).
    Returns:
        [N, C, H, W] with channels-last strides.
    """
    g, c = num_heads, wq.shape[0]
    wkv = torch.cat([wk.view(g, c // g, -1), wv.view(g, c // g, -1)], dim=1).view(2 * c, -1)
    tensors = (fine, coarse, wq, wkv, bias)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    dtype = _autocast_dtype(fine.device)
    # The kernel runs on one thread: with more intra-op threads the blocks' matmuls share them.
    if dtype is None and not grad and _kernel is not None and torch.get_num_threads() == 1:
        if all(t.dtype == torch.float32 for t in tensors):
            return _kernel_forward(*tensors, g, window)
    if dtype is None:
        return _WindowAttention.apply(*tensors, g, window, grad)
    fine, coarse, wq, wkv = (t.to(dtype) for t in (fine, coarse, wq, wkv))
    with torch.autocast(fine.device.type, enabled=False):
        return _WindowAttention.apply(fine, coarse, wq, wkv, bias, g, window, grad)


class _ProjectAdd(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fine, c, weight):
        n, cf = fine.shape[:2]
        cflat = _flat(c)  # [N, C, HW]
        out = torch.empty_like(fine, memory_format=torch.contiguous_format)
        flat, fine_flat = out.view(n, cf, -1), fine.reshape(n, cf, -1)
        for i in range(n):
            torch.addmm(fine_flat[i], weight, cflat[i], out=flat[i])
        ctx.save_for_backward(c, weight)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        c, weight = ctx.saved_tensors
        grad = grad_out.flatten(2)
        gc, gw = _conv1x1_backward(grad, c, weight, ctx.needs_input_grad[1:])
        return grad_out, gc, gw


def project_add(fine: torch.Tensor, c: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``fine + conv1x1(c, weight)`` ([N, C_f, H, W], NCHW contiguous); weight: [C_f, C]."""
    dtype = _autocast_dtype(fine.device)
    if dtype is None:
        return _ProjectAdd.apply(fine, c, weight)
    if fine.dtype != dtype:  # as the plain ops: the projection in ``dtype``, the sum promoted
        return fine + torch.nn.functional.conv2d(c, weight[:, :, None, None])
    c, weight = c.to(dtype), weight.to(dtype)
    with torch.autocast(fine.device.type, enabled=False):
        return _ProjectAdd.apply(fine, c, weight)
