"""RSE / RSP fused ops (nrd_rsp.modeling.window_attention): values and gradients against an
explicit float64 reference, gradcheck, the plain ops, autocast and the export path."""

import math
import shutil

import pytest
import torch
from torch.nn import functional as F

from nrd_rsp.modeling import window_attention as wa_module
from nrd_rsp.modeling.rsp import RSE, RSP
from nrd_rsp.modeling.window_attention import (
    fused_ops_enabled,
    plain_ops,
    project_add,
    window_attention,
)


def reference_rse(fine, coarse, wq, wk, wv, bias, num_heads, window):
    """docs/RSP.md, Eq. 1-3, written independently of the implementation: one loop over the
    k x k window offsets; for each, every fine pixel p reads the coarse pixel
    ``p // 2 + offset`` by index (nearest-floor projection), positions outside the coarse map are
    left out of the softmax, and the bias is looked up by the offset and the parity of p.
    Autograd through it gives the reference gradients."""
    n, _, h, w = fine.shape
    hc, wc = coarse.shape[-2:]
    c = wq.shape[0]
    g, d, r = num_heads, c // num_heads, window // 2
    q = torch.einsum("oc,nchw->nohw", wq, fine).view(n, g, d, h, w)
    k = torch.einsum("oc,nchw->nohw", wk, coarse).view(n, g, d, hc, wc)
    v = torch.einsum("oc,nchw->nohw", wv, coarse).view(n, g, d, hc, wc)
    py, px = torch.arange(h)[:, None], torch.arange(w)[None, :]
    parity = 2 * (py % 2) + px % 2  # [h, w]
    logits, values = [], []
    for i in range(window):
        for j in range(window):
            ry, rx = py // 2 + i - r, px // 2 + j - r  # [h, 1], [1, w]
            inside = (ry >= 0) & (ry < hc) & (rx >= 0) & (rx < wc)  # [h, w]
            ky, kx = ry.clamp(0, hc - 1), rx.clamp(0, wc - 1)
            k_r, v_r = k[:, :, :, ky, kx], v[:, :, :, ky, kx]  # [n, g, d, h, w]
            logit = (q * k_r).sum(2) / math.sqrt(d) + bias[:, parity, i * window + j]
            logits.append(logit.masked_fill(~inside, float("-inf")))
            values.append(v_r)
    weights = torch.softmax(torch.stack(logits, dim=-1), dim=-1)  # [n, g, h, w, k*k]
    out = sum(weights[..., m].unsqueeze(2) * values[m] for m in range(window * window))
    return out.reshape(n, c, h, w), weights


def _rse_args(rse):
    return (
        rse.query.weight.flatten(1),
        rse.key.weight.flatten(1),
        rse.value.weight.flatten(1),
        rse.rel_pos_bias,
    )


def _grads(out, inputs, seed=3):
    """Gradients of sum(out * G) for a fixed random G (logical order, any strides)."""
    gen = torch.Generator().manual_seed(seed)
    grad = torch.randn(out.shape, dtype=out.dtype, generator=gen).to(out.device)
    return torch.autograd.grad(out, inputs, grad)


# (fine H x W, coarse h' x w', heads, window, batch): FPN sizes (h' = ceil(H / 2)), exact 2x,
# a window larger than the map, a coarse map more than half the fine one, and rows of several
# blocks of 8 coarse pixels with a partial last block.
GEOMETRIES = [
    ((6, 8), (3, 4), 2, 3, 2),
    ((5, 7), (3, 4), 2, 3, 1),
    ((9, 4), (5, 2), 1, 5, 2),
    ((4, 3), (4, 3), 4, 3, 1),
    ((7, 37), (4, 19), 2, 3, 2),
    ((8, 32), (4, 16), 2, 5, 1),
]


def _rse_setting(fine_hw, coarse_hw, heads, window, batch, seed=1):
    torch.manual_seed(seed)
    rse = RSE(6, 5, channels=8, num_heads=heads, window_size=window).double()
    with torch.no_grad():
        rse.rel_pos_bias.normal_(0, 1.0)  # make the bias indexing matter
    fine = torch.randn(batch, 6, *fine_hw, dtype=torch.float64, requires_grad=True)
    coarse = torch.randn(batch, 5, *coarse_hw, dtype=torch.float64, requires_grad=True)
    return rse, fine, coarse


@pytest.mark.parametrize("fine_hw, coarse_hw, heads, window, batch", GEOMETRIES)
@pytest.mark.parametrize("ops", ["fused", "plain"])
def test_rse_values_and_gradients_match_the_reference(
    fine_hw, coarse_hw, heads, window, batch, ops
):
    rse, fine, coarse = _rse_setting(fine_hw, coarse_hw, heads, window, batch)
    inputs = [fine, coarse, *rse.parameters()]
    ref, ref_weights = reference_rse(fine, coarse, *_rse_args(rse), heads, window)
    ref_grads = _grads(ref, inputs)
    assert fused_ops_enabled(torch.device("cpu"))
    if ops == "plain":
        with plain_ops():
            assert not fused_ops_enabled(torch.device("cpu"))
            out = rse(fine, coarse)
            _, weights = rse(fine, coarse, return_weights=True)
    else:
        out = rse(fine, coarse)
        assert out.is_contiguous(memory_format=torch.channels_last)  # the fused layout
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-10)
    names = ["fine", "coarse", *dict(rse.named_parameters())]
    for name, got, want in zip(names, _grads(out, inputs), ref_grads):
        assert want.abs().sum() > 0, name
        torch.testing.assert_close(got, want, atol=1e-11, rtol=1e-9, msg=name)
    if ops == "plain":  # float64 throughout: the weights too (the softmax is not float32)
        torch.testing.assert_close(weights, ref_weights, atol=1e-12, rtol=1e-10)


def test_gradcheck_window_attention():
    rse, fine, coarse = _rse_setting((5, 19), (3, 10), 2, 3, 2)
    wq, wk, wv, bias = (t.detach().clone().requires_grad_() for t in _rse_args(rse))

    def fn(fine, coarse, wq, wk, wv, bias):  # window_attention takes wq / sqrt(d)
        return window_attention(fine, coarse, wq * rse.head_dim**-0.5, wk, wv, bias, 2, 3)

    torch.testing.assert_close(
        fn(fine, coarse, wq, wk, wv, bias),
        reference_rse(fine, coarse, wq, wk, wv, bias, 2, 3)[0],
        atol=1e-12,
        rtol=1e-10,
    )

    assert torch.autograd.gradcheck(fn, (fine, coarse, wq, wk, wv, bias))


def test_gradcheck_project_add():
    torch.manual_seed(0)
    fine = torch.randn(2, 5, 3, 4, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 3, 4, 6, dtype=torch.float64).permute(0, 3, 1, 2).requires_grad_()
    weight = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    # c given channels-last (what window_attention returns) and NCHW.
    c_nchw = torch.randn(2, 6, 3, 4, dtype=torch.float64, requires_grad=True)
    for cc in (c, c_nchw):
        assert torch.autograd.gradcheck(project_add, (fine, cc, weight))
        torch.testing.assert_close(
            project_add(fine, cc, weight), fine + F.conv2d(cc, weight[:, :, None, None])
        )


@pytest.mark.parametrize("norm", ["GN", ""])
def test_rsp_fused_matches_plain_ops(norm):
    """The whole RSP (Eq. 4): fused and plain ops give the same output and gradients in float64
    (GroupNorm and the 3x3 conv are shared; the fused ops replace the RSE and F + W_o c)."""
    torch.manual_seed(0)
    rsp = RSP(32, 12, channels=8, num_heads=2, norm=norm).double()
    with torch.no_grad():
        rsp.rse.rel_pos_bias.normal_()
    fine = torch.randn(2, 32, 9, 21, dtype=torch.float64, requires_grad=True)
    coarse = torch.randn(2, 12, 5, 11, dtype=torch.float64, requires_grad=True)
    inputs = [fine, coarse, *rsp.parameters()]
    out = rsp(fine, coarse)
    with plain_ops():
        ref = rsp(fine, coarse)
    assert out.is_contiguous() and out.dtype == torch.float64
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-10)
    for got, want in zip(_grads(out, inputs), _grads(ref, inputs)):
        torch.testing.assert_close(got, want, atol=1e-11, rtol=1e-9)


def test_gradcheck_rsp():
    torch.manual_seed(0)
    rsp = RSP(32, 3, channels=4, num_heads=2, norm="GN").double()
    fine = torch.randn(1, 32, 5, 6, dtype=torch.float64, requires_grad=True)
    coarse = torch.randn(1, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, c: rsp(f, c), (fine, coarse))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("inputs_dtype", ["autocast", "float32"])
def test_fused_ops_follow_autocast_like_the_plain_ops(dtype, inputs_dtype):
    """Under autocast the fused ops compute as the plain ops do (matmuls in the autocast dtype,
    the softmax in float32): same output dtypes, and their output and float32 parameter gradients
    are as close to float32's as the plain ops' are. Inputs in the autocast dtype (what an
    autocast FPN hands the RSP head) and in float32."""
    torch.manual_seed(0)
    rsp = RSP(32, 24, channels=16, num_heads=4, norm="GN")
    fine, coarse = torch.randn(2, 32, 11, 19), torch.randn(2, 24, 6, 10)
    if inputs_dtype == "autocast":
        fine, coarse = fine.to(dtype), coarse.to(dtype)
    results = {}
    for ops, ctx, amp in (("plain", plain_ops, True), ("fused", torch.enable_grad, True)) + (
        ("float32", torch.enable_grad, False),
    ):
        with ctx():
            rsp.zero_grad(set_to_none=True)
            f, cc = (fine, coarse) if amp else (fine.float(), coarse.float())
            with torch.autocast("cpu", dtype=dtype, enabled=amp):
                c, out = rsp.rse(f, cc), rsp(f, cc)
            (out.float() * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
            grads = {n: p.grad.clone() for n, p in rsp.named_parameters()}
        results[ops] = (c, out, grads)
    (c_plain, out_plain, g_plain), (c, out, grads) = results["plain"], results["fused"]
    _, out_ref, g_ref = results["float32"]
    assert c.dtype == c_plain.dtype == dtype and out.dtype == out_plain.dtype
    rel = lambda a, b: ((a.float() - b.float()).norm() / b.float().norm()).item()  # noqa: E731
    assert rel(c, c_plain) < 2e-2
    assert rel(out, out_ref) <= 1.5 * rel(out_plain, out_ref) + 1e-3
    for name, g in grads.items():
        assert g.dtype == torch.float32 and g.abs().sum() > 0, name
        assert rel(g, g_ref[name]) <= 1.5 * rel(g_plain[name], g_ref[name]) + 1e-3, name


def test_the_kernel_is_built_where_there_is_a_compiler():
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: the package installs without its kernel")
    assert wa_module.kernel_available(), "reinstall: pip install -e . (setup.py builds it)"


@pytest.mark.parametrize("fine_hw, coarse_hw, heads, window, batch", GEOMETRIES)
@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "blocks"])
def test_rse_without_autograd_matches_the_reference_in_float32(
    fine_hw, coarse_hw, heads, window, batch, kernel, monkeypatch
):
    """Float32 inference: the compiled kernel (where built) and the blocks of the fused ops."""
    if kernel and not wa_module.kernel_available():
        pytest.skip("the package was installed without its kernel")
    if not kernel:
        monkeypatch.setattr(wa_module, "_kernel", None)
    calls = []
    if kernel:
        real = wa_module._kernel
        monkeypatch.setattr(wa_module, "_kernel", lambda *a: calls.append(1) or real(*a))
    rse, fine, coarse = _rse_setting(fine_hw, coarse_hw, heads, window, batch)
    ref, _ = reference_rse(fine, coarse, *_rse_args(rse), heads, window)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the kernel is used with one intra-op thread
    try:
        with torch.no_grad():
            out = rse.float()(fine.float(), coarse.float())
    finally:
        torch.set_num_threads(threads)
    assert out.dtype == torch.float32 and len(calls) == int(kernel)
    torch.testing.assert_close(out.double(), ref, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_fused_ops_without_autograd_match_the_plain_ops(mode):
    """Inference reuses buffers (the skip in place, the output in the queries' blocks)."""
    torch.manual_seed(0)
    rsp = RSP(32, 24, channels=16, num_heads=4, norm="GN").eval()
    fine, coarse = torch.randn(2, 32, 13, 22), torch.randn(2, 24, 7, 11)
    ctx = torch.no_grad if mode == "no_grad" else torch.inference_mode
    with ctx():
        with plain_ops():
            ref_c, ref = rsp.rse(fine, coarse), rsp(fine, coarse)
        c, out = rsp.rse(fine, coarse), rsp(fine, coarse)
    torch.testing.assert_close(c, ref_c, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert not torch.equal(out, fine)  # the skip added F to a fresh tensor, not to F itself


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_saturated_softmax_matches_the_reference(dtype):
    """Logit gaps of 1e5 (random weights give such): weights whose exp() would be subnormal are 0,
    and values and gradients still match the reference (float32: to float32 rounding)."""
    rse, fine, coarse = _rse_setting((7, 19), (4, 10), 2, 3, 2)
    rse = rse.to(dtype)
    with torch.no_grad():
        rse.query.weight.mul_(300.0)
        rse.key.weight.mul_(300.0)
    fine = fine.detach().to(dtype).requires_grad_()
    coarse = coarse.detach().to(dtype).requires_grad_()
    inputs = [fine, coarse, *rse.parameters()]
    ref, weights = reference_rse(fine, coarse, *_rse_args(rse), 2, 3)
    assert (weights == 0).float().mean() > 0.5  # mostly saturated
    out = rse(fine, coarse)
    tol = dict(atol=1e-12, rtol=1e-10) if dtype == torch.float64 else dict(atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out, ref, **tol)
    for got, want in zip(_grads(out, inputs), _grads(ref, inputs)):
        scale = want.abs().max().clamp(min=1.0)
        torch.testing.assert_close(got / scale, want / scale, **tol)


def _flush_to_zero_on():
    return float(torch.tensor([1e-39]) * 2) == 0.0


@pytest.mark.parametrize("before", [False, True])
def test_flush_to_zero_is_restored(before):
    """The window attention flushes denormals inside its forward and backward only."""
    rse, fine, coarse = _rse_setting((6, 8), (3, 4), 2, 3, 1)
    rse, fine, coarse = rse.float(), fine.detach().float(), coarse.detach().float()
    fine.requires_grad_()
    torch.set_flush_denormal(before)
    try:
        rse(fine, coarse).sum().backward()
        assert _flush_to_zero_on() == before
    finally:
        torch.set_flush_denormal(False)
    assert fine.grad.abs().sum() > 0


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_tracing_uses_the_plain_ops():
    """TorchScript / ONNX export and fvcore trace the plain ops (no Python autograd.Function in
    the graph), with the eager model's values."""
    torch.manual_seed(0)
    rsp = RSP(32, 8, channels=8, num_heads=2, norm="GN").eval()
    fine, coarse = torch.randn(1, 32, 10, 12), torch.randn(1, 8, 5, 6)
    seen = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rsp = rsp

        def forward(self, f, c):
            seen.append(fused_ops_enabled(torch.device("cpu")))
            return self.rsp(f, c)

    traced = torch.jit.trace(Probe(), (fine, coarse), check_trace=False)
    assert seen == [False]
    graph = str(traced.inlined_graph)
    assert "PythonOp" not in graph and "aten::bmm" in graph
    with torch.no_grad():
        torch.testing.assert_close(traced(fine, coarse), rsp(fine, coarse), atol=1e-5, rtol=1e-5)


def test_other_devices_keep_the_plain_ops():
    """The fused ops' speed is measured on CPU only: CUDA maps take the plain ops."""
    assert fused_ops_enabled(torch.device("cpu"))
    assert not fused_ops_enabled(torch.device("cuda", 0))
