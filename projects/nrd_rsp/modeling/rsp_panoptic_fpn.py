"""RSPPanopticFPN: Detectron2's Panoptic FPN with the RSP head on its FPN (docs/RSP.md)."""

from typing import Dict, List, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, PanopticFPN
from detectron2.modeling.meta_arch.panoptic_fpn import combine_semantic_and_instance_outputs
from detectron2.modeling.meta_arch.semantic_seg import build_sem_seg_head
from detectron2.modeling.postprocessing import detector_postprocess, sem_seg_postprocess
from detectron2.structures import ImageList

from .rsp import RSPHead, check_rsp_stages_used

__all__ = ["RSPPanopticFPN", "combine_panoptic"]


def combine_panoptic(model: PanopticFPN, instances, sem_seg: torch.Tensor):
    """Panoptic FPN's combination of ``instances`` (at the output size) with the argmax of
    ``sem_seg`` ([K, H, W] logits or probabilities), with ``model``'s
    ``MODEL.PANOPTIC_FPN.COMBINE`` thresholds. Returns ``(panoptic ids [H, W], segments_info)``."""
    return combine_semantic_and_instance_outputs(
        instances,
        sem_seg.argmax(dim=0),
        model.combine_overlap_thresh,
        model.combine_stuff_area_thresh,
        model.combine_instances_score_thresh,
    )


def _check_stages_used(cfg, rsp: RSPHead, sem_seg_head) -> None:
    """Every RSP stage's output must reach a loss (DDP needs a gradient for every parameter):
    the levels read by the semantic head and, with refined instance features, the RPN and ROI
    heads. Skipped for a semantic head whose inputs are not known here."""
    names = ("in_features", "controller_in_feature", "guidance_in_feature", "aux_in_feature")
    read = set()
    for name in names:
        value = getattr(sem_seg_head, name, None)
        read.update([value] if isinstance(value, str) else value or [])
    if not read:
        return
    reader = f"{cfg.MODEL.SEM_SEG_HEAD.NAME} (MODEL.SEM_SEG_HEAD / MODEL.NRD features)"
    if cfg.MODEL.RSP_PANOPTIC_FPN.INSTANCE_FEATURES == "refined":
        read.update(cfg.MODEL.RPN.IN_FEATURES, cfg.MODEL.ROI_HEADS.IN_FEATURES)
        reader += ", MODEL.RPN.IN_FEATURES, MODEL.ROI_HEADS.IN_FEATURES"
    check_rsp_stages_used(rsp, read - {""}, reader)


@META_ARCH_REGISTRY.register()
class RSPPanopticFPN(PanopticFPN):
    """:class:`PanopticFPN` whose pyramid is refined once by :class:`RSPHead` (``self.rsp``).

    * Semantic branch (``MODEL.SEM_SEG_HEAD.NAME``, e.g. ``SemSegFPNHead`` or ``NRDHead``) is
      built for and fed the refined levels {P2'..P5', P6}. Do not name ``RSPSemSegHead`` here:
      it would run a second RSP head.
    * RPN and ROI heads see the refined levels
      (``MODEL.RSP_PANOPTIC_FPN.INSTANCE_FEATURES: "refined"``) or the plain FPN levels
      (``"fpn"``).
    * Inference combines both outputs exactly as :class:`PanopticFPN` does (same
      ``MODEL.PANOPTIC_FPN.COMBINE`` keys and Detectron2 functions).

    Parameter names of ``backbone``, ``proposal_generator``, ``roi_heads`` (and of the semantic
    head) are those of :class:`PanopticFPN`, so its checkpoints load with only ``rsp.*`` missing.
    Only the feature computation differs (:meth:`extract_features`): PanopticFPN calls
    ``self.backbone`` inside ``forward``/``inference``, hence these two are re-stated around it.
    """

    @configurable
    def __init__(self, *, rsp: RSPHead, instance_features: str = "refined", **kwargs):
        """
        Args:
            rsp: the RSP head applied to the backbone (FPN) output.
            instance_features: "refined" or "fpn": features seen by the RPN and ROI heads.
            kwargs: arguments of :class:`PanopticFPN`.
        """
        super().__init__(**kwargs)
        if instance_features not in ("refined", "fpn"):
            raise ValueError(
                "MODEL.RSP_PANOPTIC_FPN.INSTANCE_FEATURES must be 'refined' or 'fpn', "
                f"got {instance_features!r}"
            )
        self.rsp = rsp
        self.instance_features = instance_features

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        # Built on a forked RNG: every other module gets the initial weights that PanopticFPN
        # gets with the same seed, and training draws the same random numbers (ROI sampling),
        # so that the two meta-architectures differ by the RSP head only.
        with torch.random.fork_rng(devices=[]):
            rsp = RSPHead(cfg, ret["backbone"].output_shape())
        ret["rsp"] = rsp
        # PanopticFPN built its head for the FPN shapes; rebuild it only if the refined differ.
        fpn_shapes = ret["backbone"].output_shape()
        if rsp.output_shape() != fpn_shapes:
            ret["sem_seg_head"] = build_sem_seg_head(cfg, rsp.output_shape())
        ret["instance_features"] = cfg.MODEL.RSP_PANOPTIC_FPN.INSTANCE_FEATURES
        _check_stages_used(cfg, rsp, ret["sem_seg_head"])
        return ret

    def extract_features(
        self, images: torch.Tensor
    ) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
        """
        Args:
            images: [N, 3, H, W] normalized, padded to the backbone's size divisibility.
        Returns:
            (semantic features, instance features): dicts name -> [N, C, H/s, W/s]; the first is
            the refined pyramid, the second the refined or the FPN pyramid.
        """
        fpn = self.backbone(images)
        refined = self.rsp(fpn)
        return refined, refined if self.instance_features == "refined" else fpn

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        """Same inputs and outputs as :meth:`PanopticFPN.forward`."""
        if not self.training:
            return self.inference(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        sem_features, inst_features = self.extract_features(images.tensor)

        gt_sem_seg = [x["sem_seg"].to(self.device) for x in batched_inputs]
        gt_sem_seg = ImageList.from_tensors(
            gt_sem_seg,
            self.backbone.size_divisibility,
            self.sem_seg_head.ignore_value,
            self.backbone.padding_constraints,
        ).tensor
        _, losses = self.sem_seg_head(sem_features, gt_sem_seg)

        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        proposals, proposal_losses = self.proposal_generator(images, inst_features, gt_instances)
        _, detector_losses = self.roi_heads(images, inst_features, proposals, gt_instances)
        losses.update(proposal_losses)
        losses.update(detector_losses)
        return losses

    def inference(self, batched_inputs: List[Dict[str, torch.Tensor]], do_postprocess: bool = True):
        """Same as :meth:`PanopticFPN.inference`: list of dicts with ``sem_seg``, ``instances``
        and ``panoptic_seg``, or ``(detector_results, sem_seg_results)`` without postprocess."""
        images = self.preprocess_image(batched_inputs)
        sem_features, inst_features = self.extract_features(images.tensor)
        sem_seg_results, _ = self.sem_seg_head(sem_features, None)
        proposals, _ = self.proposal_generator(images, inst_features, None)
        detector_results, _ = self.roi_heads(images, inst_features, proposals, None)
        if not do_postprocess:
            return detector_results, sem_seg_results

        processed_results = []
        for sem_seg_result, detector_result, input_per_image, image_size in zip(
            sem_seg_results, detector_results, batched_inputs, images.image_sizes
        ):
            height = input_per_image.get("height", image_size[0])
            width = input_per_image.get("width", image_size[1])
            sem_seg_r = sem_seg_postprocess(sem_seg_result, image_size, height, width)
            detector_r = detector_postprocess(detector_result, height, width)
            panoptic_r = combine_panoptic(self, detector_r, sem_seg_r)
            processed_results.append(
                {"sem_seg": sem_seg_r, "instances": detector_r, "panoptic_seg": panoptic_r}
            )
        return processed_results
