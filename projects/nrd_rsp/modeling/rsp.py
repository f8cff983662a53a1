"""RSP: cross-scale pixel-to-region relations (Bai et al., 2021), see docs/RSP.md.

"Multi-Scale Feature Aggregation by Cross-Scale Pixel-to-Region Relation Operation for Semantic
Segmentation". No public code exists; docs/RSP.md is our specification and lists our choices.

* :class:`RSE` (Relational Semantics Extractor): every pixel ``p`` of a fine map ``F`` (stride s)
  attends to the k x k region of the coarser map ``F'`` (stride 2s) centred at ``p // 2``
  (docs/RSP.md, Eq. 1-3).
* :class:`RSP` (Relational Semantics Propagator): fuses the extracted semantics into ``F``
  (Eq. 4).
* :class:`RSPHead`: RSPs stacked top-down over the FPN levels, P5 -> P4 -> P3 -> P2 (Eq. 5).
* :class:`RSPSemSegHead`: RSPHead + Semantic-FPN decoder, registered in ``SEM_SEG_HEADS_REGISTRY``.
"""

from typing import Dict, Iterable, List, Optional

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from detectron2.modeling.meta_arch.semantic_seg import SemSegFPNHead
from torch import nn
from torch.nn import functional as F

from .window_attention import fused_ops_enabled, project_add, window_attention

__all__ = ["RSE", "RSP", "RSPHead", "RSPSemSegHead", "check_rsp_stages_used"]


def _windows(x: torch.Tensor, window_size: int, dim: int) -> torch.Tensor:
    """The k x k neighbourhood of every pixel, zero outside the map.

    Args:
        x: [N, G, H, W, d] (channels last).
        dim: where the window axis goes in the output, -1 or -2.
    Returns:
        [N, G, H, W, d, k*k] (dim=-1) or [N, G, H, W, k*k, d] (dim=-2); window index
        ``i * k + j`` is the offset ``(i - k // 2, j - k // 2)``.
    """
    h, w = x.shape[2], x.shape[3]
    r = window_size // 2
    x = torch.constant_pad_nd(x, (0, 0, r, r, r, r))  # = F.pad, which fvcore does not know
    # A loop over the k*k window offsets (not over pixels): k*k strided views, one copy.
    shifted = [
        x[:, :, i : i + h, j : j + w] for i in range(window_size) for j in range(window_size)
    ]
    return torch.stack(shifted, dim=dim)


class RSE(nn.Module):
    """Relational Semantics Extractor (docs/RSP.md, Eq. 1-3).

    For every pixel ``p`` of the fine map and head ``h`` (G heads of ``d = channels / G``):

        q_h(p)   = (W_q F)[p]_h,   k_h(r) = (W_k F')[r]_h,   v_h(r) = (W_v F')[r]_h
        w_h(p,r) = softmax_{r in R(p)} ( q_h(p) . k_h(r) / sqrt(d) + b_h(r - p) )
        c_h(p)   = sum_{r in R(p)} w_h(p,r) v_h(r)

    ``R(p)`` is the k x k window of F' centred at ``p // 2`` (nearest-floor projection). Window
    positions outside F' are excluded from the softmax (their weight is exactly 0). The
    relative offset ``r - p`` (in fine pixels, coarse pixel centres at ``2r + 0.5``) is fixed
    by the window index and the parity of ``p``, so ``b`` is a table of ``G x 4 x k*k``
    learned scalars (``rel_pos_bias[h, 2 * (py % 2) + (px % 2), i * k + j]``).

    Plain ops (the reference; what tracing and export see): the 4 fine pixels of a 2 x 2 block
    share one coarse window, so keys and values are gathered once per coarse pixel
    ([N*G*h'*w', k*k, d]) and each block's 4 queries attend to them with one batched matmul.
    Cost O(HW k^2 d); no k^2 x C tensor at the fine resolution. In eager mode on CPU the same
    values come from :func:`.window_attention.window_attention` (fused, hand-written backward).
    """

    def __init__(
        self,
        fine_channels: int,
        coarse_channels: int,
        channels: int = 128,
        num_heads: int = 4,
        window_size: int = 3,
    ):
        """
        Args:
            fine_channels: channels of F (queries).
            coarse_channels: channels of F' (keys and values).
            channels: query/key/value channels over all heads; output channels of c.
            num_heads: G; must divide ``channels``.
            window_size: k, odd.
        """
        super().__init__()
        if channels % num_heads:
            raise ValueError(
                f"MODEL.RSP.CHANNELS {channels} is not divisible by MODEL.RSP.NUM_HEADS {num_heads}"
            )
        if window_size < 1 or window_size % 2 == 0:
            raise ValueError(f"MODEL.RSP.WINDOW_SIZE must be odd and positive, got {window_size}")
        self.channels = channels
        self.num_heads = num_heads
        self.head_dim = channels // num_heads
        self.window_size = window_size
        # No biases: a key bias adds the same q.b to every logit of a window (softmax-invariant,
        # it would never get a gradient); value/output biases only shift F before RSP's norm.
        self.query = Conv2d(fine_channels, channels, kernel_size=1, bias=False)
        self.key = Conv2d(coarse_channels, channels, kernel_size=1, bias=False)
        self.value = Conv2d(coarse_channels, channels, kernel_size=1, bias=False)
        for layer in (self.query, self.key, self.value):
            weight_init.c2_xavier_fill(layer)
        self.rel_pos_bias = nn.Parameter(torch.zeros(num_heads, 4, window_size * window_size))
        nn.init.trunc_normal_(self.rel_pos_bias, std=0.02)

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor, return_weights: bool = False):
        """
        Args:
            fine: F, [N, C_f, H, W].
            coarse: F', [N, C_c, h', w'] with ``H <= 2h'`` and ``W <= 2w'`` (FPN gives
                ``h' = ceil(H / 2)``).
            return_weights: also return the relation weights.
        Returns:
            c: [N, channels, H, W]; with ``return_weights`` also the weights w:
            [N, G, H, W, k*k], window index ``i * k + j`` = offset ``(i - k//2, j - k//2)`` from
            ``p // 2``; 0 where the window leaves F'.
        """
        n, _, height, width = fine.shape
        hc, wc = coarse.shape[-2:]
        if height > 2 * hc or width > 2 * wc:
            raise ValueError(
                f"RSE: fine map {height}x{width} is more than twice the coarse map {hc}x{wc}"
            )
        g, d, kk = self.num_heads, self.head_dim, self.window_size**2
        wq = self.query.weight * (d**-0.5)  # = query(fine) / sqrt(d), one pass
        if not return_weights and fused_ops_enabled(fine.device):  # same values, faster backward
            wk, wv = self.key.weight.flatten(1), self.value.weight.flatten(1)
            bias = self.rel_pos_bias
            return window_attention(fine, coarse, wq.flatten(1), wk, wv, bias, g, self.window_size)

        # Plain ops (tracing, export; the reference). Queries of each 2x2 block:
        # [N*G*h'*w', 4, d]. Pad the fine map to 2h' x 2w'.
        q = F.conv2d(fine, wq)
        q = torch.constant_pad_nd(q, (0, 2 * wc - width, 0, 2 * hc - height))
        q = q.reshape(n, g, d, hc, 2, wc, 2).permute(0, 1, 3, 5, 4, 6, 2).reshape(-1, 4, d)

        # Keys and values [N*G*h'*w', k*k, d] of each coarse window (the k*k axis before d:
        # the faster gather; bmm takes the keys transposed without a copy).
        def windows(x):  # [N, G*d, h', w'] -> [N*G*h'*w', k*k, d]
            x = x.reshape(n, g, d, hc, wc).permute(0, 1, 3, 4, 2)
            return _windows(x, self.window_size, dim=-2).reshape(-1, kk, d)

        keys, values = windows(self.key(coarse)), windows(self.value(coarse))
        ones = torch.ones(1, 1, hc, wc, 1, dtype=coarse.dtype, device=coarse.device)
        inside = _windows(ones, self.window_size, dim=-1)
        inside = inside.view(hc * wc, 1, kk)

        # The softmax runs in float32 under autocast (AMP): q.k in float16/bfloat16, then float
        # (float64 stays float64).
        logits = torch.bmm(q, keys.transpose(1, 2))
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        logits = logits.view(n, g, hc * wc, 4, kk)
        logits = logits + self.rel_pos_bias.view(1, g, 1, 4, kk)
        logits = logits.masked_fill(inside == 0, float("-inf"))  # the centre is always inside
        # Softmax over the k*k window, spelled out: ATen's softmax is several times slower on
        # CPU for rows this short.
        weights = (logits - logits.amax(dim=-1, keepdim=True)).exp()
        weights = weights / weights.sum(dim=-1, keepdim=True)

        out = torch.bmm(weights.view(-1, 4, kk).to(values.dtype), values)  # [N*G*h'*w', 4, d]
        out = out.view(n, g, hc, wc, 2, 2, d).permute(0, 1, 6, 2, 4, 3, 5)
        out = out.reshape(n, g * d, 2 * hc, 2 * wc)[:, :, :height, :width]
        if not return_weights:
            return out
        weights = weights.view(n, g, hc, wc, 2, 2, kk).permute(0, 1, 2, 4, 3, 5, 6)
        weights = weights.reshape(n, g, 2 * hc, 2 * wc, kk)[:, :, :height, :width]
        return out, weights


class RSP(nn.Module):
    """Relational Semantics Propagator (docs/RSP.md, Eq. 4).

        F_out = F + ReLU(Norm(Conv3x3(F + W_o c))),   c = RSE(F, F')

    (without ``identity_skip``: ``F_out = ReLU(Norm(Conv3x3(F + W_o c)))``). The output has the
    shape of F.
    """

    def __init__(
        self,
        fine_channels: int,
        coarse_channels: int,
        *,
        channels: int = 128,
        num_heads: int = 4,
        window_size: int = 3,
        norm: str = "GN",
        identity_skip: bool = True,
    ):
        super().__init__()
        self.identity_skip = identity_skip
        self.rse = RSE(fine_channels, coarse_channels, channels, num_heads, window_size)
        self.proj = Conv2d(channels, fine_channels, kernel_size=1, bias=False)
        self.fuse = Conv2d(
            fine_channels,
            fine_channels,
            kernel_size=3,
            padding=1,
            bias=not norm,
            norm=get_norm(norm, fine_channels),
            activation=F.relu_,  # in place: no norm saves its output for backward
        )
        weight_init.c2_xavier_fill(self.proj)
        weight_init.c2_msra_fill(self.fuse)

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """fine: [N, C_f, H, W], coarse: [N, C_c, h', w'] -> [N, C_f, H, W]."""
        c = self.rse(fine, coarse)
        if not fused_ops_enabled(fine.device):
            out = self.fuse(fine + self.proj(c))
            return fine + out if self.identity_skip else out
        # The same sums with fewer full-size temporaries: F + W_o c in one matmul-add (its
        # gradient of c in the RSE's layout) and, without autograd, the skip in place.
        out = self.fuse(project_add(fine, c, self.proj.weight.flatten(1)))
        if not self.identity_skip:
            return out
        grad = torch.is_grad_enabled() and (out.requires_grad or fine.requires_grad)
        return fine + out if grad or out.dtype != fine.dtype else out.add_(fine)


class RSPHead(nn.Module):
    """RSPs stacked top-down over a feature pyramid (docs/RSP.md, Eq. 5).

    With ``in_features = [p2, p3, p4, p5]`` and 3 stages:

        P5' = P5,   P4' = RSP(P4, P5'),   P3' = RSP(P3, P4'),   P2' = RSP(P2, P3')

    so context reaches stride 4 progressively. With fewer stages, the finest levels are passed
    through unchanged. Input levels not in ``in_features`` are passed through: in particular
    FPN's ``p6 = MaxPool_{k=1,s=2}(P5)`` (LastLevelMaxPool) is also ``MaxPool(P5')`` because the
    coarsest level is not refined. Output names, channels and strides equal the input's.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        in_features: List[str],
        channels: int = 128,
        num_heads: int = 4,
        window_size: int = 3,
        num_stages: Optional[int] = None,
        norm: str = "GN",
        identity_skip: bool = True,
    ):
        """
        Args:
            input_shape: shapes of all input features (e.g. the FPN's ``output_shape()``).
            in_features: pyramid levels, fine to coarse, strides doubling (e.g. p2..p5).
            channels, num_heads, window_size: of every :class:`RSE`.
            num_stages: number of stacked RSPs, 1 .. len(in_features) - 1 (default: all).
            norm: normalization of the RSP 3x3 conv.
            identity_skip: add ``F`` to every RSP's output (:class:`RSP`).
        """
        super().__init__()
        in_features = sorted(in_features, key=lambda f: input_shape[f].stride)
        strides = [input_shape[f].stride for f in in_features]
        if len(in_features) < 2 or any(b != 2 * a for a, b in zip(strides, strides[1:])):
            raise ValueError(
                f"MODEL.RSP.IN_FEATURES needs >= 2 levels with strides doubling, got {in_features}"
            )
        if num_stages is None:
            num_stages = len(in_features) - 1
        if not 1 <= num_stages <= len(in_features) - 1:
            raise ValueError(
                f"MODEL.RSP.NUM_STAGES {num_stages} does not fit {len(in_features)} levels"
            )
        self.input_shape = dict(input_shape)
        self.in_features = in_features
        # (fine, coarse) pairs in execution order, coarsest first.
        self.pairs = [
            (in_features[i], in_features[i + 1])
            for i in range(len(in_features) - 2, len(in_features) - 2 - num_stages, -1)
        ]
        self.stages = nn.ModuleDict(
            {
                fine: RSP(
                    input_shape[fine].channels,
                    input_shape[coarse].channels,
                    channels=channels,
                    num_heads=num_heads,
                    window_size=window_size,
                    norm=norm,
                    identity_skip=identity_skip,
                )
                for fine, coarse in self.pairs
            }
        )

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        missing = [f for f in cfg.MODEL.RSP.IN_FEATURES if f not in input_shape]
        if missing:
            raise ValueError(f"MODEL.RSP.IN_FEATURES {missing} not among {list(input_shape)}")
        return {
            "input_shape": input_shape,
            "in_features": list(cfg.MODEL.RSP.IN_FEATURES),
            "channels": cfg.MODEL.RSP.CHANNELS,
            "num_heads": cfg.MODEL.RSP.NUM_HEADS,
            "window_size": cfg.MODEL.RSP.WINDOW_SIZE,
            "num_stages": cfg.MODEL.RSP.NUM_STAGES,
            "norm": cfg.MODEL.RSP.NORM,
            "identity_skip": cfg.MODEL.RSP.IDENTITY_SKIP,
        }

    def forward(self, features: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """
        Args:
            features: name -> [N, C_l, H_l, W_l], at least ``in_features``.
        Returns:
            dict with the same keys and shapes: refined ``in_features`` (P5' = P5), other
            entries (``p6``) unchanged.
        """
        out = dict(features)
        for fine, coarse in self.pairs:
            out[fine] = self.stages[fine](features[fine], out[coarse])
        return out

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return dict(self.input_shape)

    def unused_stages(self, read: Iterable[str]) -> List[str]:
        """The stages (named by the level they refine) whose output nothing uses when the
        consumers of the refined pyramid read the levels ``read``: their parameters would get
        no gradient (DistributedDataParallel then fails with "Expected to have finished
        reduction")."""
        used = set(read)
        for fine, coarse in reversed(self.pairs):  # finest first: a used stage uses its input
            if fine in used:
                used.add(coarse)
        return [fine for fine, _ in self.pairs if fine not in used]


def check_rsp_stages_used(rsp: RSPHead, read: Iterable[str], reader_key: str) -> None:
    """``ValueError`` (one line, naming the keys) when ``rsp`` has stages whose output the
    consumers reading ``read`` (configured by ``reader_key``) never use."""
    unused = rsp.unused_stages(read)
    if unused:
        raise ValueError(
            f"MODEL.RSP.NUM_STAGES {len(rsp.pairs)} refines {', '.join(unused)}, which "
            f"{reader_key} (reading {', '.join(sorted(set(read)))}) never uses: those RSP "
            f"parameters would get no gradient (DDP fails). Raise MODEL.RSP.NUM_STAGES until a "
            f"level read is refined, or read {rsp.pairs[-1][0]}."
        )


@SEM_SEG_HEADS_REGISTRY.register()
class RSPSemSegHead(SemSegFPNHead):
    """Semantic head: :class:`RSPHead` on the FPN levels, then Detectron2's Semantic-FPN
    decoder on the refined levels (docs/RSP.md, Sec. "Semantic head").

    ``MODEL.SEM_SEG_HEAD.RSP_FUSION``:
      * ``"p2"``: 3x3 conv + 1x1 classifier on P2' alone (stride 4);
      * ``"sum"``: every level of ``MODEL.SEM_SEG_HEAD.IN_FEATURES`` is brought to stride 4 by
        conv + 2x bilinear upsampling steps and summed, as in :class:`SemSegFPNHead`.
    Logits are upsampled bilinearly to the padded input size. Same contract, losses and keys
    (IGNORE_VALUE, LOSS_WEIGHT, CONVS_DIM, NORM, COMMON_STRIDE) as :class:`SemSegFPNHead`,
    whose parameter names it keeps (plus ``rsp.*``).
    """

    @configurable
    def __init__(self, input_shape: Dict[str, ShapeSpec], *, rsp: RSPHead, **kwargs):
        """
        Args:
            input_shape: shapes of the refined levels the decoder reads.
            rsp: the RSP head, run on the features given to :meth:`forward`.
            kwargs: arguments of :class:`SemSegFPNHead`.
        """
        super().__init__(input_shape, **kwargs)
        self.rsp = rsp

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        rsp = RSPHead(cfg, input_shape)
        ret = super().from_config(cfg, rsp.output_shape())
        fusion = cfg.MODEL.SEM_SEG_HEAD.RSP_FUSION
        if fusion == "p2":
            finest = rsp.in_features[0]
            ret["input_shape"] = {finest: rsp.output_shape()[finest]}
        elif fusion != "sum":
            raise ValueError(f"MODEL.SEM_SEG_HEAD.RSP_FUSION must be 'p2' or 'sum', got {fusion!r}")
        reader = f"MODEL.SEM_SEG_HEAD.RSP_FUSION {fusion}" + (
            "" if fusion == "p2" else " with MODEL.SEM_SEG_HEAD.IN_FEATURES"
        )
        check_rsp_stages_used(rsp, ret["input_shape"], reader)
        ret["rsp"] = rsp
        return ret

    def forward(self, features, targets=None):
        """
        Args:
            features: FPN features, name -> [N, C, H_l, W_l].
            targets: [N, H, W] labels at the padded input size, or None.
        Returns:
            training: ``(None, {"loss_sem_seg": ...})``; inference: ``([N, K, H, W] logits, {})``.
        """
        return super().forward(self.rsp(features), targets)
