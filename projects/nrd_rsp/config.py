"""Config keys of nrd_rsp.

``add_nrd_rsp_config(cfg)`` adds every key the project reads on top of Detectron2's defaults
and of ``detectron2.projects.deeplab`` (poly LR, DeepLab ResNet stem, ASPP keys). Call it right
after ``get_cfg()`` and before ``merge_from_file``.
"""

from detectron2.config import CfgNode as CN
from detectron2.projects.deeplab import add_deeplab_config

__all__ = ["add_nrd_rsp_config"]


def add_nrd_rsp_config(cfg):
    """Add the project's config keys to ``cfg`` in place. Safe to call twice."""
    if getattr(cfg, "_NRD_RSP_CONFIG_ADDED", False):
        return
    add_deeplab_config(
        cfg
    )  # INPUT.CROP.SINGLE_CATEGORY_MAX_AREA, SOLVER.POLY_LR_*, RESNETS.STEM_TYPE ...
    _add_input_config(cfg)
    _add_dataset_config(cfg)
    _add_rsp_config(cfg)
    _add_nrd_config(cfg)
    _register_renamed_keys(cfg)
    _add_solver_and_test_config(cfg)
    _add_reliability_config(cfg)
    _add_precision_config(cfg)
    cfg._NRD_RSP_CONFIG_ADDED = True


def _add_input_config(cfg):
    # Semantic mapper (nrd_rsp.data.mappers.SemanticSegDatasetMapper).
    # "sem_seg" | "panoptic_fpn" | "" (Detectron2's DatasetMapper).
    cfg.INPUT.DATASET_MAPPER_NAME = ""
    # Random resize: a ratio r drawn uniformly from RESIZE_SCALE_RANGE; the image is rescaled,
    # keeping its aspect ratio, to the largest size whose long side is <= r * max(BASE_SIZE) and
    # short side <= r * min(BASE_SIZE), whatever its orientation (mmseg's keep-ratio
    # Resize(img_scale, ratio_range)). RESIZE_BASE_SIZE is (H, W) of a landscape image.
    cfg.INPUT.RESIZE_SCALE_RANGE = (0.5, 2.0)
    cfg.INPUT.RESIZE_BASE_SIZE = (1024, 2048)
    # Photometric distortion at train time (nrd_rsp.data.mappers.build_photometric_augmentations).
    cfg.INPUT.COLOR_AUG = True
    # Which photometric distortion COLOR_AUG applies; both give the same result for RGB and BGR
    # input up to channel order:
    # "detectron2": brightness, contrast and saturation factors in 0.8-1.2, each with p = 0.5
    #   (this project's recipe for Semantic FPN / RSP / Panoptic FPN; the default, so those
    #   configs are unchanged);
    # "mmseg": mmseg's PhotoMetricDistortion, the NRD authors' choice (set by every NRD config):
    #   brightness +-32 (additive), contrast 0.5-1.5, saturation 0.5-1.5, hue +-18 (OpenCV hue
    #   units, 2 degrees each), each with p = 0.5, contrast first or last with p = 0.5.
    cfg.INPUT.COLOR_AUG_TYPE = "detectron2"
    # Pad train images (with 0) and labels (with the ignore value) to a multiple of this; -1: off.
    cfg.INPUT.SIZE_DIVISIBILITY = -1


def _add_dataset_config(cfg):
    # Built-in toy data (nrd_rsp.data.toy). Generated on first use under $DETECTRON2_DATASETS/toy.
    cfg.DATASETS.TOY = CN()
    cfg.DATASETS.TOY.NUM_TRAIN = 200
    cfg.DATASETS.TOY.NUM_VAL = 40
    cfg.DATASETS.TOY.IMAGE_SIZE = (128, 160)  # (H, W)
    cfg.DATASETS.TOY.SEED = 0
    cfg.DATASETS.TOY.MAX_POLE_WIDTH = 3  # 1: every thin structure is 1 px wide
    cfg.DATASETS.TOY.CONTEXT_STUFF = False  # road looks like wall; context tells them apart


def _add_rsp_config(cfg):
    """RSP head (Bai et al. 2021), see docs/RSP.md."""
    cfg.MODEL.RSP = CN()
    cfg.MODEL.RSP.IN_FEATURES = ["p2", "p3", "p4", "p5"]  # fine to coarse, strides doubling
    cfg.MODEL.RSP.WINDOW_SIZE = 3  # k (odd): the k x k region of the coarser map
    cfg.MODEL.RSP.NUM_HEADS = 4  # G
    cfg.MODEL.RSP.CHANNELS = 128  # query/key/value channels of the relation (all heads)
    # Stacked RSPs from the top: 3 = P5->P4, P4->P3, P3->P2; with fewer, the finest levels
    # pass through unchanged.
    cfg.MODEL.RSP.NUM_STAGES = 3
    cfg.MODEL.RSP.NORM = "GN"  # norm of each RSP's 3x3 conv
    # Identity skip around each RSP: F_out = F + ReLU(Norm(Conv(F + W_o c))) (docs/RSP.md, Eq. 4).
    # False gives the plain F_out = ReLU(Norm(Conv(F + W_o c))).
    cfg.MODEL.RSP.IDENTITY_SKIP = True
    # Read by RSPSemSegHead only (a head key, as Detectron2's heads read MODEL.SEM_SEG_HEAD.*):
    # "p2" classifies from P2' alone; "sum" sums the levels of MODEL.SEM_SEG_HEAD.IN_FEATURES
    # upsampled to stride 4, Semantic-FPN style.
    cfg.MODEL.SEM_SEG_HEAD.RSP_FUSION = "sum"
    # Keys of the RSPPanopticFPN meta-architecture (as MODEL.PANOPTIC_FPN for PanopticFPN).
    cfg.MODEL.RSP_PANOPTIC_FPN = CN()
    # Which features the RPN and ROI heads see: "refined" (P2'..P5', P6) or "fpn" (P2..P6).
    cfg.MODEL.RSP_PANOPTIC_FPN.INSTANCE_FEATURES = "refined"


def _add_nrd_config(cfg):
    """NRD head (Zhang et al. NeurIPS 2021), see docs/NRD.md.

    Class count, ignore label and main loss weight come from MODEL.SEM_SEG_HEAD.{NUM_CLASSES,
    IGNORE_VALUE, LOSS_WEIGHT}; its features from MODEL.NRD.*_IN_FEATURE (NRDHead does not read
    MODEL.SEM_SEG_HEAD.IN_FEATURES, so the NRD configs leave it unset). Norm keys take
    Detectron2's values: "BN", "SyncBN", "GN", ..., "" for no norm. Dynamic parameters per
    controller location:
    P = Cin*H + H + H*H + H + H*K + K with Cin = 2 + 4 * FOURIER_FEATURES + G
    (899 for K = 19 with the defaults).
    """
    cfg.MODEL.NRD = CN()
    cfg.MODEL.NRD.CONTROLLER_IN_FEATURE = "res5"  # coarsest feature (res5 / p5): light ASPP input
    cfg.MODEL.NRD.GUIDANCE_IN_FEATURE = "res2"  # finest feature (res2 / p2): guidance branch
    cfg.MODEL.NRD.AUX_IN_FEATURE = "res4"  # "" disables the auxiliary FCN head
    cfg.MODEL.NRD.ASPP_CHANNELS = 512
    # Dilation 1 is a 1x1 branch, others depthwise-separable 3x3; plus image pooling.
    cfg.MODEL.NRD.ASPP_DILATIONS = [1, 3, 6, 9]
    cfg.MODEL.NRD.CONTROLLER_CHANNELS = 512
    cfg.MODEL.NRD.HIDDEN_CHANNELS = 16  # H
    cfg.MODEL.NRD.GUIDANCE_CHANNELS = 16  # G
    # Width of the guidance branch's 3x3 conv, before its 1x1 projection to GUIDANCE_CHANNELS.
    cfg.MODEL.NRD.GUIDANCE_CONV_CHANNELS = 48
    # r: each controller location decodes an r x r patch; output stride = controller stride / r.
    cfg.MODEL.NRD.PATCH_SIZE = 8
    cfg.MODEL.NRD.FOURIER_FEATURES = 0  # 0: off; else number of frequencies per coordinate
    # Authors' init: the controller's last conv is Xavier-normal divided by P. False keeps plain
    # Xavier-normal (dynamic MLPs at a normal scale from the start), for short schedules.
    cfg.MODEL.NRD.SCALE_CONTROLLER_INIT = True
    # Norm of every NRD conv; GN (32 groups) cannot split the reference's 48 guidance channels.
    cfg.MODEL.NRD.NORM = "BN"
    # Norm of the MLP input (2 + G channels: coordinates + guidance). The authors use the head's
    # norm (BN / SyncBN); "" is no norm.
    cfg.MODEL.NRD.INPUT_NORM = "BN"
    cfg.MODEL.NRD.AUX_CHANNELS = 256
    cfg.MODEL.NRD.AUX_LOSS_WEIGHT = 0.4
    cfg.MODEL.NRD.AUX_DROPOUT = 0.1
    # Norm of the light ASPP's image-pooling 1x1 conv: 1x1 conv + norm + ReLU, the authors'
    # mmseg ASPPHead.image_pool with the head's norm (BN / SyncBN). "": 1x1 conv with bias + ReLU
    # and no norm, as Detectron2's ASPP (BatchNorm on the 1x1 pooled map needs more than one
    # image per GPU in training; SyncBN does not).
    cfg.MODEL.NRD.POOLING_NORM = "BN"
    # Averaging of the main and auxiliary cross-entropy. False (default, the authors' mmseg 0.10
    # loss, before its avg_non_ignore option): sum over the valid pixels divided by the number of
    # all target pixels, ignored ones counting 0. True: mean over the valid pixels only.
    cfg.MODEL.NRD.LOSS_AVG_NON_IGNORE = False


# Keys this project renamed: a config that still sets one fails with the new name.
RENAMED_KEYS = {
    "MODEL.NRD.GUIDANCE_PROJ_CHANNELS": "MODEL.NRD.GUIDANCE_CONV_CHANNELS",
    "MODEL.RSP.SEM_SEG_FUSION": "MODEL.SEM_SEG_HEAD.RSP_FUSION",
    "MODEL.RSP.INSTANCE_FEATURES": "MODEL.RSP_PANOPTIC_FPN.INSTANCE_FEATURES",
}


def _register_renamed_keys(cfg):
    for old, new in RENAMED_KEYS.items():
        cfg.register_renamed_key(old, new)


def _add_solver_and_test_config(cfg):
    # Floor of WarmupPolyLR (nrd_rsp.solver): lr = (base_lr - MIN_LR) (1 - it / max_it)^power
    # + MIN_LR, times the warm-up factor, as mmcv's PolyLrUpdaterHook(min_lr). 0.0 (default) is
    # Detectron2's WarmupPolyLR exactly; the NRD configs set the authors' 1e-4.
    cfg.SOLVER.POLY_LR_MIN_LR = 0.0
    # After evaluation, draw this many predictions of the first test dataset as PNG (0: off).
    cfg.TEST.NUM_VIS_IMAGES = 0
    # Semantic test-time augmentation (multi-scale + flip) uses Detectron2's own
    # TEST.AUG.{ENABLED, MIN_SIZES, MAX_SIZE, FLIP}; see nrd_rsp.modeling.test_time_augmentation.
    # COCO panoptic evaluation (nrd_rsp.panoptic_evaluation): PQ from "panopticapi" (Detectron2's
    # default) or "hotcoco" (same results, benchmarks/results/panoptic_eval.md); WORKERS caps
    # panopticapi's process pool (0: one process per core, as panopticapi does).
    cfg.TEST.PANOPTIC_EVAL = CN()
    cfg.TEST.PANOPTIC_EVAL.BACKEND = "panopticapi"
    cfg.TEST.PANOPTIC_EVAL.WORKERS = 0


def _add_reliability_config(cfg):
    """Fault tolerance (nrd_rsp.data.resumable_loader, nrd_rsp.checkpoint, nrd_rsp.engine);
    docs/RELIABILITY.md."""
    # Unreadable/corrupt training samples are skipped with a warning; training stops once more
    # than this fraction of the samples loaded so far were skipped ...
    cfg.DATALOADER.MAX_SKIPPED_FRACTION = 0.05
    # ... counted only after this many samples (per process), so one early bad file is tolerated.
    cfg.DATALOADER.SKIP_CHECK_MIN_SAMPLES = 100
    # The training batches are a pure function of (SEED, iteration, rank): an exact resume and
    # identical batches for any NUM_WORKERS. ASPECT_RATIO_GROUPING then groups in the sampler,
    # by the dataset dicts' orientation, before mapping. False: Detectron2's
    # AspectRatioGroupedDataset (groups in worker arrival order), resume only approximately exact.
    cfg.DATALOADER.DETERMINISTIC = True
    # Stop training (all ranks) before the optimizer step when a loss term is NaN/inf.
    cfg.SOLVER.CHECK_FINITE_LOSS = True
    # Preemption (nrd_rsp.engine.preemption): on any of these signals, received by any rank,
    # every rank stops after the same iteration, which is saved; exit status 75. () turns it off.
    cfg.PREEMPTION = CN()
    cfg.PREEMPTION.SIGNALS = ("SIGTERM", "SIGUSR1")


def _add_precision_config(cfg):
    """Mixed precision and determinism (nrd_rsp.engine.precision, nrd_rsp.engine.determinism);
    GETTING_STARTED.md, "Mixed precision and determinism"."""
    # Autocast dtype of SOLVER.AMP.ENABLED: "float16" (with a GradScaler, dynamic loss scale) or
    # "bfloat16" (no scaler needed). On CPU, float16 becomes bfloat16 (one log line).
    cfg.SOLVER.AMP.PRECISION = "float16"
    # Opt-in: torch.use_deterministic_algorithms(True, warn_only=True), cudnn.deterministic,
    # cudnn.benchmark off, CUBLAS_WORKSPACE_CONFIG. Slower on GPU; the ops that stay
    # nondeterministic are logged at start-up.
    cfg.DETERMINISTIC_ALGORITHMS = False
