"""NRD: Dynamic Neural Representational Decoders (Zhang, Liu, Tian, Shen, NeurIPS 2021).

Every location of the coarsest encoder map (stride ``s``, e.g. res5 at stride 32) predicts the
parameters of its own compact MLP (paper Sec. 3). That MLP decodes the ``r x r`` patch of
labels under the location from the relative coordinates inside the patch and
low-level "guidance" features, so the whole image is decoded at stride ``s / r`` by a few
thousand tiny networks. See docs/NRD.md for shapes, the parameter layout and measured FLOPs.

Modules:

* :class:`LightASPP`: context module on the encoder output (1x1 branch, depthwise-separable
  dilated branches, image pooling, 3x3 fusion).
* :class:`NRDHead`: the semantic head (``SEM_SEG_HEADS_REGISTRY``): light ASPP -> controller ->
  dynamic parameters; guidance branch; dynamic decoding (:class:`.dynamic_mlp.DynamicMLP`);
  auxiliary FCN head for training.
"""

from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, DepthwiseSeparableConv2d, ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn
from torch.nn import functional as F

from .dynamic_mlp import DynamicMLP, autocast_off, relative_coordinates

__all__ = ["NRDHead", "LightASPP"]


def _conv_norm_relu(in_channels: int, out_channels: int, norm, kernel_size: int = 3) -> Conv2d:
    """``k x k`` conv keeping the size (bias only without a norm) + norm + ReLU."""
    return Conv2d(
        in_channels,
        out_channels,
        kernel_size=kernel_size,
        padding=kernel_size // 2,
        bias=norm == "",
        norm=get_norm(norm, out_channels),
        activation=F.relu,
    )


def _check_norm_name(norm, key: str):  # Detectron2 (and this key) spell "no norm" as ""
    if isinstance(norm, str) and norm.lower() == "none":
        raise ValueError(f'{key}: "none" is not a norm; use "" for no norm, as in Detectron2.')


class LightASPP(nn.Module):
    """The light ASPP context module of NRD on the encoder output.

    Branches: a 1x1 conv for dilation 1, a depthwise-separable 3x3 conv (depthwise + norm + ReLU,
    pointwise + norm + ReLU) for every other dilation, and image pooling (global average pooling,
    1x1 conv + norm + ReLU, broadcast back). The concatenation goes through a 3x3 conv + norm +
    ReLU. The pooling branch's norm is the authors' (mmseg ``ASPPHead.image_pool``: ConvModule
    with the head's norm); ``pooling_norm=""`` gives Detectron2's ASPP pooling branch instead
    (1x1 conv with bias + ReLU, no norm, so a batch of one image trains with BatchNorm).

    Unlike :class:`detectron2.layers.ASPP` (exactly three dilations after a fixed 1x1 branch,
    1x1 output projection), the number of dilations is free and the fusion is 3x3.

    Shapes: ``[N, C_in, h, w] -> [N, C_out, h, w]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        dilations: Sequence[int],
        *,
        norm: Union[str, Callable],
        pooling_norm: Union[str, Callable, None] = None,
    ):
        """
        Args:
            in_channels, out_channels: ``C_in`` and ``C_out``.
            dilations: one branch per dilation (1: a 1x1 conv).
            norm: norm of every conv (see ``get_norm``).
            pooling_norm: norm of the image-pooling 1x1 conv; ``None`` uses ``norm``, ``""``
                none (the conv then has a bias), as everywhere in Detectron2.
        """
        super().__init__()
        if not dilations:
            raise ValueError("LightASPP needs at least one dilation.")
        if pooling_norm is None:
            pooling_norm = norm
        _check_norm_name(pooling_norm, "MODEL.NRD.POOLING_NORM")
        self.branches = nn.ModuleList()
        for d in dilations:
            if d == 1:
                conv = _conv_norm_relu(in_channels, out_channels, norm, kernel_size=1)
                weight_init.c2_xavier_fill(conv)
            else:
                conv = DepthwiseSeparableConv2d(
                    in_channels,
                    out_channels,
                    kernel_size=3,
                    padding=d,
                    dilation=d,
                    norm1=norm,
                    activation1=F.relu,
                    norm2=norm,
                    activation2=F.relu,
                )
            self.branches.append(conv)
        self.pool_conv = _conv_norm_relu(in_channels, out_channels, pooling_norm, kernel_size=1)
        weight_init.c2_xavier_fill(self.pool_conv)
        num_inputs = (len(dilations) + 1) * out_channels
        self.project = _conv_norm_relu(num_inputs, out_channels, norm)
        weight_init.c2_xavier_fill(self.project)

    def forward(self, x):
        h, w = x.shape[-2:]
        pooled = self.pool_conv(F.adaptive_avg_pool2d(x, 1))
        outs = [branch(x) for branch in self.branches]
        outs.append(pooled.expand(-1, -1, h, w))
        return self.project(torch.cat(outs, dim=1))


def _check_input_shape(input_shape: Dict[str, ShapeSpec], names: Sequence[str], patch_size: int):
    """Every named feature ("" skipped) exists, and ``patch_size`` divides the stride of the
    first (the controller feature)."""
    for name in filter(None, names):
        if name not in input_shape:
            raise KeyError(
                f"NRDHead needs feature '{name}' (MODEL.NRD.*_IN_FEATURE), the backbone "
                f"gives {sorted(input_shape)}."
            )
    if patch_size < 1:
        raise ValueError(f"MODEL.NRD.PATCH_SIZE must be positive, got {patch_size}.")
    stride = input_shape[names[0]].stride
    if stride % patch_size:
        raise ValueError(
            f"MODEL.NRD.PATCH_SIZE {patch_size} does not divide the controller stride "
            f"{stride}: the patches would not tile an integer-stride grid."
        )


def _conv_then_1x1(in_channels: int, channels: int, out_channels: int, norm, divide_by: int = 1):
    """3x3 conv + norm + ReLU (``channels`` wide, c2 Xavier), then a 1x1 conv to
    ``out_channels``, Xavier-normal divided by ``divide_by``, zero bias. Step 2, the controller
    (``[N, A, h, w] -> [N, P, h, w]``; the authors divide by ``P``: tiny initial dynamic
    weights), and step 3, the guidance branch (``[N, C2, H/4, W/4] -> [N, G, H/4, W/4]``)."""
    conv = _conv_norm_relu(in_channels, channels, norm)
    weight_init.c2_xavier_fill(conv)
    out = Conv2d(channels, out_channels, kernel_size=1)
    nn.init.xavier_normal_(out.weight)
    if divide_by != 1:
        with torch.no_grad():
            out.weight.div_(divide_by)
    nn.init.constant_(out.bias, 0)
    return nn.Sequential(conv, out)


def _input_norm(norm, channels: int) -> nn.Module:
    """Step 4: normalisation of the ``[N, C_coord + G, h r, w r]`` MLP input; ``""``: none."""
    _check_norm_name(norm, "MODEL.NRD.INPUT_NORM")
    return get_norm(norm, channels) or nn.Identity()


def _aux_head(in_channels: int, channels: int, num_classes: int, norm, dropout: float):
    """Auxiliary FCN head (mmseg ``FCNHead``, one conv): 3x3 conv + norm + ReLU, Dropout2d,
    1x1 classifier (normal std 0.01, zero bias); ``[N, C4, h4, w4] -> [N, K, h4, w4]``."""
    conv = _conv_norm_relu(in_channels, channels, norm)
    weight_init.c2_msra_fill(conv)
    cls = Conv2d(channels, num_classes, kernel_size=1)
    nn.init.normal_(cls.weight, std=0.01)
    nn.init.constant_(cls.bias, 0)
    return nn.Sequential(conv, nn.Dropout2d(dropout), cls)


@SEM_SEG_HEADS_REGISTRY.register()
class NRDHead(nn.Module):
    """Semantic head of NRD (Zhang et al., NeurIPS 2021).

    Pipeline for a controller map of stride ``s`` and size ``h x w`` (res5: ``s = 32``):

    1. context: :class:`LightASPP` on the controller feature, ``[N, C5, h, w] -> [N, A, h, w]``;
    2. controller: 3x3 conv + norm + ReLU, 1x1 conv -> ``[N, P, h, w]`` dynamic
       parameters, ``P = (2+G)H + H + H*H + H + H*K + K`` with the default MLP
       ``(2+G) -> H -> H -> K``;
    3. guidance: guidance feature (res2, stride 4) -> 3x3 conv + norm + ReLU ->
       1x1 conv -> ``[N, G, ., .]``, bilinearly resized to the output stride ``s / r`` when that
       differs from the guidance stride, and zero-padded bottom/right to ``h r x w r``;
    4. MLP input: relative coordinates (:func:`relative_coordinates`, tiled over the patches)
       concatenated with the guidance, normalised (``norm``): ``[N, 2+G, h r, w r]``;
    5. dynamic decoding: :class:`DynamicMLP`, each location decodes its ``r x r`` patch ->
       logits ``[N, K, h r, w r]`` at stride ``s / r`` (4 for ``r = 8``);
    6. logits bilinearly resized to the padded input size ``[N, K, h s, w s]``.

    Under autocast (AMP), steps 3-5 and the losses run in float32 (:func:`.autocast_off`).

    Training adds cross-entropy at input resolution (``loss_sem_seg``, times ``loss_weight``)
    and, if ``aux_in_feature`` is set, an FCN head on that feature (3x3 conv + norm + ReLU,
    dropout, 1x1 classifier) with cross-entropy times ``aux_loss_weight``
    (``loss_sem_seg_aux``). The auxiliary head never runs in eval mode. Each loss resizes its
    logits to their own padded size (feature size x feature stride: ``h s`` for the main logits,
    ``16 h_4`` for stride-16 auxiliary logits) and crops the top-left target-sized window, so
    both stay aligned with the labels when the input is not a multiple of 32. Both losses average
    over all target pixels, ignored ones counting 0 (mmseg 0.10, the authors' code), or over the
    valid pixels with ``avg_non_ignore``.

    ``forward(features, targets)`` follows :class:`detectron2.modeling.SemSegFPNHead`:
    training returns ``(None, losses)``, inference ``(logits [N, K, h s, w s], {})``. Targets
    ``[N, H, W]`` may be smaller than ``h s x w s`` (inputs not padded to a multiple of ``s``):
    the logits are then cropped at the bottom/right, the way ``sem_seg_postprocess`` crops them.

    Constructor arguments (keyword-only after ``input_shape``):
        input_shape: shapes of the available features (at least the controller and guidance
            features, and the auxiliary one if used).
        num_classes: K, the MLP output width.
        controller_in_feature: coarsest feature (res5 / p5), input of the light ASPP.
        guidance_in_feature: fine feature (res2 / p2) for the guidance branch.
        aux_in_feature: feature of the auxiliary FCN head (res4); "" disables it.
        aspp_channels, aspp_dilations: light ASPP width and dilations (1 means a 1x1 branch).
        controller_channels: width of the controller's 3x3 conv.
        hidden_channels: H, width of the two hidden MLP layers.
        guidance_channels: G, guidance channels fed to the MLP.
        guidance_conv_channels: width of the guidance branch's 3x3 conv (before its 1x1
            projection to G).
        patch_size: r; each controller location decodes an r x r patch (output stride s/r).
        fourier_features: F; if > 0, add F sin/cos frequencies per coordinate to the MLP input.
        scale_controller_init: divide the Xavier-normal init of the controller's last conv by
            P (the authors' init). Without it the dynamic MLPs start at a normal scale, which
            trains much faster on short schedules (the toy configs).
        norm: normalisation of every conv of the head (see ``get_norm``).
        input_norm: normalisation of the MLP input (coordinates + guidance; BN / SyncBN in the
            paper); ``None`` uses ``norm``, ``""`` none.
        aux_channels, aux_loss_weight, aux_dropout: auxiliary FCN head.
        pooling_norm: norm of the light ASPP's image-pooling conv; ``None`` uses ``norm``
            (authors), ``""`` none (conv with bias, Detectron2's ASPP).
        avg_non_ignore: average both cross-entropies over the valid pixels only; False (the
            authors' mmseg 0.10 loss) divides their sum by the number of all target pixels.
        loss_weight: weight of the main cross-entropy.
        ignore_value: label ignored by the losses.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        num_classes: int,
        controller_in_feature: str = "res5",
        guidance_in_feature: str = "res2",
        aux_in_feature: str = "res4",
        aspp_channels: int = 512,
        aspp_dilations: Sequence[int] = (1, 3, 6, 9),
        controller_channels: int = 512,
        hidden_channels: int = 16,
        guidance_channels: int = 16,
        guidance_conv_channels: int = 48,
        patch_size: int = 8,
        fourier_features: int = 0,
        scale_controller_init: bool = True,
        norm: Union[str, Callable] = "BN",
        input_norm: Union[str, Callable, None] = None,
        aux_channels: int = 256,
        aux_loss_weight: float = 0.4,
        aux_dropout: float = 0.1,
        pooling_norm: Union[str, Callable, None] = None,
        avg_non_ignore: bool = False,
        loss_weight: float = 1.0,
        ignore_value: int = -1,
    ):
        """Keyword arguments: see the class docstring (``from_config`` reads ``MODEL.NRD.*``)."""
        super().__init__()
        _check_input_shape(
            input_shape, [controller_in_feature, guidance_in_feature, aux_in_feature], patch_size
        )
        ctrl_shape = input_shape[controller_in_feature]
        guide_shape = input_shape[guidance_in_feature]
        self.controller_in_feature = controller_in_feature
        self.guidance_in_feature = guidance_in_feature
        self.aux_in_feature = aux_in_feature
        self.aux_stride = input_shape[aux_in_feature].stride if aux_in_feature else None
        self.avg_non_ignore = avg_non_ignore
        self.controller_stride = ctrl_shape.stride
        self.guidance_stride = guide_shape.stride
        self.patch_size = patch_size
        self.output_stride = ctrl_shape.stride // patch_size
        self.num_classes = num_classes
        self.loss_weight = loss_weight
        self.aux_loss_weight = aux_loss_weight
        self.ignore_value = ignore_value

        # 1-2: context and controller
        self.aspp = LightASPP(
            ctrl_shape.channels, aspp_channels, aspp_dilations, norm=norm, pooling_norm=pooling_norm
        )
        coords = relative_coordinates(patch_size, fourier_features)
        self.register_buffer("coords", coords, persistent=False)  # [C_coord, r, r]
        mlp_in = coords.shape[0] + guidance_channels
        self.mlp = DynamicMLP([mlp_in, hidden_channels, hidden_channels, num_classes])
        p = self.mlp.num_params
        self.controller = _conv_then_1x1(
            aspp_channels, controller_channels, p, norm, divide_by=p if scale_controller_init else 1
        )
        # 3-4: guidance and MLP input normalisation
        self.guidance = _conv_then_1x1(
            guide_shape.channels, guidance_conv_channels, guidance_channels, norm
        )
        self.input_norm = _input_norm(norm if input_norm is None else input_norm, mlp_in)
        # auxiliary FCN head (training only)
        self.aux_head = None
        if aux_in_feature:
            aux_in = input_shape[aux_in_feature].channels
            self.aux_head = _aux_head(aux_in, aux_channels, num_classes, norm, aux_dropout)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        nrd = cfg.MODEL.NRD
        return {
            "input_shape": input_shape,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "controller_in_feature": nrd.CONTROLLER_IN_FEATURE,
            "guidance_in_feature": nrd.GUIDANCE_IN_FEATURE,
            "aux_in_feature": nrd.AUX_IN_FEATURE,
            "aspp_channels": nrd.ASPP_CHANNELS,
            "aspp_dilations": list(nrd.ASPP_DILATIONS),
            "controller_channels": nrd.CONTROLLER_CHANNELS,
            "hidden_channels": nrd.HIDDEN_CHANNELS,
            "guidance_channels": nrd.GUIDANCE_CHANNELS,
            "guidance_conv_channels": nrd.GUIDANCE_CONV_CHANNELS,
            "patch_size": nrd.PATCH_SIZE,
            "fourier_features": nrd.FOURIER_FEATURES,
            "scale_controller_init": nrd.SCALE_CONTROLLER_INIT,
            "norm": nrd.NORM,
            "input_norm": nrd.INPUT_NORM,
            "aux_channels": nrd.AUX_CHANNELS,
            "aux_loss_weight": nrd.AUX_LOSS_WEIGHT,
            "aux_dropout": nrd.AUX_DROPOUT,
            "pooling_norm": nrd.POOLING_NORM,
            "avg_non_ignore": nrd.LOSS_AVG_NON_IGNORE,
            "loss_weight": cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
        }

    def forward(self, features: Dict[str, torch.Tensor], targets: Optional[torch.Tensor] = None):
        """
        Args:
            features: backbone features by name.
            targets: ``[N, H, W]`` int64 labels (training), ``H <= h s``, ``W <= w s``.

        Returns:
            training: ``(None, {"loss_sem_seg", ["loss_sem_seg_aux"]})``;
            inference: ``(logits [N, K, h s, w s], {})``.
        """
        logits = self.layers(features)
        h, w = features[self.controller_in_feature].shape[-2:]
        padded_size = (h * self.controller_stride, w * self.controller_stride)
        if self.training:
            if targets is None:
                raise ValueError("NRDHead needs targets in training mode.")
            aux_logits = None
            if self.aux_head is not None:
                aux_logits = self.aux_head(features[self.aux_in_feature])
            return None, self.losses(logits, aux_logits, targets)
        return self._resize(logits, padded_size), {}

    def dynamic_params(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Steps 1-2: ``[N, P, h, w]`` MLP parameters, one set per controller location."""
        return self.controller(self.aspp(features[self.controller_in_feature]))

    def mlp_inputs(self, features: Dict[str, torch.Tensor], grid_size: Tuple[int, int]):
        """Steps 3-4 before normalisation: ``[N, C_coord + G, h r, w r]`` (coordinates first).

        Args:
            grid_size: ``(h, w)`` of the controller map.
        """
        h, w = grid_size
        r = self.patch_size
        feature = features[self.guidance_in_feature]
        with autocast_off(feature):  # float32 under AMP (class docstring)
            guide = self.guidance(feature.float())
            if self.guidance_stride != self.output_stride:
                scale = self.guidance_stride / self.output_stride
                guide = F.interpolate(
                    guide, scale_factor=scale, mode="bilinear", align_corners=False
                )
        pad_h, pad_w = h * r - guide.shape[-2], w * r - guide.shape[-1]
        if pad_h or pad_w:
            # Inputs not padded to a multiple of the controller stride: the patch grid extends
            # beyond the guidance map (the image) at the bottom/right.
            guide = F.pad(guide, [0, pad_w, 0, pad_h])
        n, c = guide.shape[0], self.coords.shape[0]
        coords = self.coords.to(guide.dtype)[None, :, None, :, None, :].expand(n, c, h, r, w, r)
        coords = coords.reshape(n, c, h * r, w * r)
        return torch.cat([coords, guide], dim=1)

    def decode(self, inputs: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Step 5: ``inputs [N, C_in, h r, w r]``, ``params [N, P, h, w]`` -> ``[N, K, h r, w r]``.

        Pixel ``(i r + a, j r + b)`` is decoded by the MLP of location ``(i, j)``.
        """
        n, c, hr, wr = inputs.shape
        h, w = params.shape[-2:]
        r = self.patch_size
        assert hr == h * r and wr == w * r, (inputs.shape, params.shape, r)
        patches = inputs.reshape(n, c, h, r, w, r).permute(0, 2, 4, 3, 5, 1)
        patches = patches.reshape(n, h, w, r * r, c)
        out = self.mlp(patches, params)  # [N, h, w, r*r, K]
        k = out.shape[-1]
        out = out.reshape(n, h, w, r, r, k).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(n, k, hr, wr)

    def layers(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Steps 1-5: logits ``[N, K, h r, w r]`` at stride ``s / r``."""
        params = self.dynamic_params(features)
        inputs = self.mlp_inputs(features, params.shape[-2:])
        with autocast_off(params):  # float32 under AMP (class docstring)
            return self.decode(self.input_norm(inputs), params.float())

    @staticmethod
    def _resize(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor, stride: int) -> torch.Tensor:
        """Cross-entropy of ``logits [N, K, h', w']`` at ``stride`` against ``targets [N, H, W]``.

        The logits are bilinearly resized to ``stride x`` their size (the padded input they
        cover) and the top-left ``H x W`` is kept: pixel ``y`` of the targets always meets the
        logits of feature row ``y / stride``, whatever the other features' strides.
        """
        padded_size = (logits.shape[-2] * stride, logits.shape[-1] * stride)
        th, tw = targets.shape[-2:]
        if th > padded_size[0] or tw > padded_size[1]:
            raise ValueError(
                f"Targets of size {(th, tw)} are larger than the decoded size {padded_size}."
            )
        logits = self._resize(logits.float(), padded_size)[..., :th, :tw]
        if self.avg_non_ignore:
            return F.cross_entropy(logits, targets, ignore_index=self.ignore_value)
        # mmseg 0.10: ignored pixels contribute 0 and still count in the mean.
        total = F.cross_entropy(logits, targets, reduction="sum", ignore_index=self.ignore_value)
        return total / max(targets.numel(), 1)

    def losses(self, logits, aux_logits, targets):
        """``loss_sem_seg`` (logits at the output stride) and, with ``aux_logits`` (at the
        auxiliary feature's stride), ``loss_sem_seg_aux``, each times its weight."""
        main = self._loss(logits, targets, self.output_stride)
        losses = {"loss_sem_seg": main * self.loss_weight}
        if aux_logits is not None:
            aux = self._loss(aux_logits, targets, self.aux_stride)
            losses["loss_sem_seg_aux"] = aux * self.aux_loss_weight
        return losses
