"""Cost analysis and speed measurement, shared by ``tools/analyze_model.py``,
``tools/benchmark.py`` and ``benchmarks/``.

Definitions used by every tool and table of the project:

* **FLOPs** are fvcore's: one fused multiply-add counts as one flop (the convention of the
  papers' "GFLOPs"); element-wise ops are not counted. Counting uses Detectron2's
  :class:`~detectron2.utils.analysis.FlopCountAnalysis` (jit trace of one inference forward),
  plus zero-cost handles for data-movement ops of our modules (:data:`EXTRA_ZERO_COST_OPS`).
* **Components** of a model, by module name (:func:`component_of`):

  - ``backbone``: the ResNet (``backbone.bottom_up`` of an FPN, else all of ``backbone``);
  - ``neck``: FPN (``backbone.fpn_*``, ``backbone.top_block`` and the top-down pathway run by
    the FPN module itself) and RSP (a module named ``rsp``, e.g. ``rsp`` of
    :class:`RSPPanopticFPN` or ``sem_seg_head.rsp`` of ``RSPSemSegHead``);
  - ``head``: ``sem_seg_head`` (without its ``rsp``), ``proposal_generator``, ``roi_heads``;
  - ``other``: what runs outside these modules (normalisation, padding, post-processing).

  "Decoder" in the benchmark tables means ``neck + head`` (everything after the backbone);
  ``head`` alone is reported as well.
* **Inference parameters** exclude modules that never run at inference (auxiliary heads such as
  NRD's FCN head): :func:`inference_parameter_count`.

Model building (:func:`setup`, :func:`build_model`) makes every config of the project usable in
one process: SyncBN becomes BN and weights that cannot be loaded here (URLs) are dropped, both
logged.
"""
import contextlib
import functools
import logging
import os
import platform
import resource
import sys
import time
from collections import Counter
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils import comm

from .engine import ConfigError, Trainer, norm_keys_set_to, setup_cfg

__all__ = [
    "COMPONENTS",
    "EXTRA_ZERO_COST_OPS",
    "SemanticPath",
    "activation_count_analysis",
    "autocast",
    "build_model",
    "component_breakdown",
    "component_of",
    "current_rss_mib",
    "default_input_size",
    "device_description",
    "flop_count_analysis",
    "inference_parameter_count",
    "latency_stats",
    "make_single_process",
    "module_counts",
    "peak_memory",
    "project_module_names",
    "reset_peak_memory",
    "resolve_device",
    "semantic_path",
    "setup",
    "synchronize",
    "synthetic_inference_inputs",
    "synthetic_train_batches",
    "time_steps",
    "unsupported_ops_by_module",
]

logger = logging.getLogger("nrd_rsp.analysis")

COMPONENTS = ("backbone", "neck", "head", "other")

# Ops fvcore has no handle for that move data without arithmetic (F.pad, tensor factories).
# Counted as 0 flops, like Detectron2 ignores aten::constant_pad_nd.
EXTRA_ZERO_COST_OPS = (
    "aten::pad",
    "aten::new_ones",
    "aten::ones_like",
    "aten::zeros_like",
    "aten::zeros",
    "aten::unbind",
    "aten::roll",
    "aten::repeat",
)

_SYNC_NORMS = {"SyncBN", "nnSyncBN", "naiveSyncBN", "naiveSyncBN_N"}
_WRAPPER_PREFIX = "model."  # TracingAdapter stores the model as ``.model``


# --------------------------------------------------------------------------------------------
# Config and model
# --------------------------------------------------------------------------------------------
def make_single_process(cfg: CfgNode) -> List[str]:
    """Adapt an unfrozen ``cfg`` to a single process without network, in place.

    * every ``*NORM`` key set to a synchronised BatchNorm becomes ``"BN"`` (same computation
      and parameters in one process);
    * ``MODEL.WEIGHTS`` given as a URL becomes ``""`` (random initialisation): FLOPs,
      parameters and speed do not depend on weight values (except through the number of
      detections an instance head keeps). A local path is kept (and loaded by
      :func:`build_model`); a missing local file is a :class:`ConfigError`.

    Returns:
        human-readable descriptions of the changes (also logged).
    """
    changes = []
    if comm.get_world_size() == 1:
        for key in norm_keys_set_to(cfg, _SYNC_NORMS):
            value = functools.reduce(lambda node, part: node[part], key.split("."), cfg)
            changes.append(f"{key}: {value} -> BN (single process)")
            cfg.merge_from_list([key, "BN"])
    weights = cfg.MODEL.WEIGHTS
    if weights and "://" in weights:
        changes.append(
            f"MODEL.WEIGHTS: '{weights}' -> '' (URL weights are not loaded; random initialisation "
            "gives the same FLOPs, parameters and speed, up to the number of detections of "
            "instance heads; pass a local file to load weights)"
        )
        cfg.MODEL.WEIGHTS = ""
    elif weights and not os.path.isfile(weights):
        raise ConfigError(
            f"MODEL.WEIGHTS file not found: '{weights}'. Fix the path, or pass MODEL.WEIGHTS \"\"."
        )
    for c in changes:
        logger.info(c)
    return changes


def resolve_device(name: Optional[str]) -> torch.device:
    """``"cuda"``/``"cuda:1"``/``"cpu"`` -> device; a CUDA device without CUDA is a ConfigError."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device cpu.")
    if device.type not in ("cuda", "cpu"):
        raise ConfigError(f"Unsupported device '{name}': use cuda or cpu.")
    return device


def setup(config_file: str, opts: Sequence[str] = (), device: Optional[str] = None) -> CfgNode:
    """Load a config like ``train_net.py`` does (:func:`nrd_rsp.engine.setup_cfg`), then
    :func:`make_single_process` and set ``MODEL.DEVICE`` (default: the config's, CPU if CUDA is
    missing). Returns a frozen config."""
    cfg = setup_cfg(config_file, opts, freeze=False)
    make_single_process(cfg)
    if device is not None:
        cfg.MODEL.DEVICE = str(resolve_device(device))
    cfg.freeze()
    return cfg


def build_model(cfg: CfgNode, eval_mode: bool = True) -> nn.Module:
    """``Trainer.build_model(cfg)``, weights loaded when ``MODEL.WEIGHTS`` is set, eval mode."""
    model = Trainer.build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model.train(not eval_mode)


def default_input_size(cfg: CfgNode, task: str = "inference") -> Tuple[int, int]:
    """(H, W) a benchmark uses when none is given.

    train: ``INPUT.CROP.SIZE`` when absolute crops are on; toy datasets: their image size;
    otherwise ``(MIN_SIZE_TEST, MAX_SIZE_TEST)`` (the largest test input, e.g. 1024x2048).
    """
    if task == "train" and cfg.INPUT.CROP.ENABLED and cfg.INPUT.CROP.TYPE == "absolute":
        return tuple(int(x) for x in cfg.INPUT.CROP.SIZE)
    if any(name.startswith("toy_") for name in cfg.DATASETS.TEST):
        return tuple(int(x) for x in cfg.DATASETS.TOY.IMAGE_SIZE)
    return int(cfg.INPUT.MIN_SIZE_TEST), int(cfg.INPUT.MAX_SIZE_TEST)


class SemanticPath(nn.Module):
    """The semantic path of a segmentation model: ``backbone -> [rsp] -> sem_seg_head``.

    Input: normalised images ``[N, 3, H, W]`` (H, W multiples of the backbone's size
    divisibility); output: logits ``[N, K, H, W]``. Used to compare semantic decoders without
    pre/post-processing or instance branches. Sub-module names follow the meta-architectures
    (``backbone``, ``rsp``, ``sem_seg_head``), so :func:`component_breakdown` applies.
    """

    def __init__(self, backbone: nn.Module, sem_seg_head: nn.Module, rsp: Optional[nn.Module] = None):
        super().__init__()
        self.backbone = backbone
        self.rsp = rsp
        self.sem_seg_head = sem_seg_head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images)
        if self.rsp is not None:
            features = self.rsp(features)
        return self.sem_seg_head(features)[0]


def semantic_path(model: nn.Module) -> SemanticPath:
    """:class:`SemanticPath` of a ``SemanticSegmentor``, ``PanopticFPN`` or ``RSPPanopticFPN``
    (shares their modules), in the model's train/eval mode."""
    if getattr(model, "sem_seg_head", None) is None:
        raise ConfigError(f"{type(model).__name__} has no semantic head (sem_seg_head).")
    path = SemanticPath(model.backbone, model.sem_seg_head, getattr(model, "rsp", None))
    return path.train(model.training)


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
def synthetic_image(height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """[3, H, W] float32 in [0, 255]: smooth random blobs plus noise (not constant, so that
    detection heads see varied scores)."""
    low = torch.rand(1, 3, max(1, height // 16), max(1, width // 16), generator=generator)
    img = nn.functional.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)[0]
    img = img * 200 + torch.rand(3, height, width, generator=generator) * 55
    return img.clamp_(0, 255)


def synthetic_inference_inputs(
    height: int, width: int, batch_size: int = 1, device="cpu", seed: int = 0
) -> List[Dict]:
    """Detectron2 inference inputs: ``[{"image": [3, H, W], "height": H, "width": W}] * B``."""
    g = torch.Generator().manual_seed(seed)
    return [
        {"image": synthetic_image(height, width, g).to(device), "height": height, "width": width}
        for _ in range(batch_size)
    ]


def _blocky_labels(height, width, num_classes, generator, block=16):
    low = torch.randint(
        num_classes, (1, 1, max(1, height // block), max(1, width // block)), generator=generator
    )
    return nn.functional.interpolate(low.float(), size=(height, width), mode="nearest")[0, 0].long()


def synthetic_train_batches(
    model: nn.Module,
    cfg: CfgNode,
    height: int,
    width: int,
    batch_size: int,
    num_batches: int = 2,
    device="cpu",
    seed: int = 0,
    num_instances: int = 4,
) -> List[List[Dict]]:
    """Training batches with the labels ``model`` needs, built once (cached by the caller).

    * models with ``sem_seg_head``: ``"sem_seg"`` [H, W] int64, blocky regions of
      ``SEM_SEG_HEAD.NUM_CLASSES`` classes;
    * models with ``roi_heads``: ``"instances"`` with ``gt_boxes``, ``gt_classes``
      (``ROI_HEADS.NUM_CLASSES``) and ``gt_masks`` (BitMasks, ellipses inside the boxes).
    """
    g = torch.Generator().manual_seed(seed)
    needs_sem = getattr(model, "sem_seg_head", None) is not None
    needs_inst = getattr(model, "roi_heads", None) is not None
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    batches = []
    for _ in range(num_batches):
        batch = []
        for _ in range(batch_size):
            d = {"image": synthetic_image(height, width, g).to(device), "height": height, "width": width}
            if needs_sem:
                d["sem_seg"] = _blocky_labels(height, width, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, g).to(device)
            if needs_inst:
                wh = torch.rand(num_instances, 2, generator=g) * 0.4 + 0.1
                ctr = torch.rand(num_instances, 2, generator=g) * (1 - wh) + wh / 2
                size = torch.tensor([width, height], dtype=torch.float32)
                boxes = torch.cat([(ctr - wh / 2) * size, (ctr + wh / 2) * size], dim=1)
                cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
                rx, ry = (boxes[:, 2] - boxes[:, 0]) / 2, (boxes[:, 3] - boxes[:, 1]) / 2
                masks = ((xs[None] - cx[:, None, None]) / rx[:, None, None]) ** 2 + (
                    (ys[None] - cy[:, None, None]) / ry[:, None, None]
                ) ** 2 <= 1
                inst = Instances((height, width))
                inst.gt_boxes = Boxes(boxes)
                inst.gt_classes = torch.randint(cfg.MODEL.ROI_HEADS.NUM_CLASSES, (num_instances,), generator=g)
                inst.gt_masks = BitMasks(masks)
                d["instances"] = inst.to(device)
            batch.append(d)
        batches.append(batch)
    return batches


# --------------------------------------------------------------------------------------------
# FLOPs, activations, parameters
# --------------------------------------------------------------------------------------------
def _configure(analysis):
    analysis.set_op_handle(**{op: None for op in EXTRA_ZERO_COST_OPS})
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    return analysis


def flop_count_analysis(model: nn.Module, inputs):
    """FLOP analysis of one inference forward: Detectron2's ``FlopCountAnalysis`` (its handles
    and ignored element-wise ops) plus :data:`EXTRA_ZERO_COST_OPS`, warnings off.

    Args:
        model: a Detectron2 model (``inputs``: list of dicts) or a module taking one tensor
            (``inputs``: tensor), e.g. :class:`SemanticPath`.
    Returns:
        the analysis; its module names carry the prefix ``model.`` (Detectron2's tracing
        wrapper), which :func:`module_counts` and :func:`unsupported_ops_by_module` remove.
    """
    from detectron2.utils.analysis import FlopCountAnalysis

    return _configure(FlopCountAnalysis(model, inputs))


def activation_count_analysis(model: nn.Module, inputs):
    """fvcore ``ActivationCountAnalysis`` (output elements of conv/matmul/linear ops) through
    Detectron2's tracing wrapper; same inputs as :func:`flop_count_analysis`."""
    from fvcore.nn import ActivationCountAnalysis

    from detectron2.export import TracingAdapter

    wrapper = TracingAdapter(model, inputs, allow_non_tensor=True)
    return _configure(ActivationCountAnalysis(wrapper, wrapper.flattened_inputs))


def _strip(name: str) -> str:
    if name == "model":
        return ""
    return name[len(_WRAPPER_PREFIX):] if name.startswith(_WRAPPER_PREFIX) else name


def module_counts(analysis) -> Dict[str, int]:
    """``analysis.by_module()`` keyed by the model's own module names ("" = whole model)."""
    counts = {}
    for name, value in analysis.by_module().items():
        key = _strip(name)
        counts[key] = max(counts.get(key, 0), value)  # "" and "model" both mean the whole model
    return counts


def component_of(module_name: str) -> str:
    """Component (:data:`COMPONENTS`) of a module name; see the module docstring."""
    parts = module_name.split(".") if module_name else []
    if "rsp" in parts:
        return "neck"
    if parts[:1] == ["backbone"]:
        if len(parts) == 1:
            return "backbone"
        if parts[1] == "bottom_up":
            return "backbone"
        if parts[1].startswith("fpn_") or parts[1] == "top_block":
            return "neck"
        return "backbone"  # a plain ResNet: stem, res2 ...
    if parts[:1] and parts[0] in ("sem_seg_head", "proposal_generator", "roi_heads"):
        return "head"
    return "other"


def _nearest_parents(names: Iterable[str]) -> Dict[str, Optional[str]]:
    """name -> nearest ancestor among ``names`` ("" is the root; the root's parent is None)."""
    present = set(names)
    parents = {}
    for name in present:
        if not name:
            parents[name] = None
            continue
        node = name
        while True:
            node = node.rsplit(".", 1)[0] if "." in node else ""
            if node in present or not node:
                parents[name] = node
                break
    return parents


def _own_counts(subtree: Mapping[str, Counter]) -> Dict[str, Counter]:
    """Subtree totals (every module name -> Counter of its subtree) -> own counts (what ran in
    the module itself, outside its sub-modules)."""
    own = {name: Counter(value) for name, value in subtree.items()}
    for name, parent in _nearest_parents(subtree).items():
        if parent is not None and parent in own:
            own[parent].subtract(subtree[name])
    return {name: +c for name, c in own.items()}


def component_breakdown(counts: Mapping[str, float]) -> Dict[str, float]:
    """Split a per-module count into :data:`COMPONENTS`.

    Args:
        counts: every module name -> total of its subtree, ``""`` = whole model (the format of
            :func:`module_counts` and of fvcore's ``parameter_count``).
    Returns:
        {component: count}; what a module computes outside its sub-modules goes to the
        module's component, so the four parts add up to ``counts[""]``.
    """
    counts = dict(counts)
    counts.setdefault("", 0)
    own = _own_counts({name: Counter({"x": value}) for name, value in counts.items()})
    out = {c: 0 for c in COMPONENTS}
    is_fpn = "backbone.bottom_up" in counts
    for name, c in own.items():
        # FPN.forward itself runs the top-down pathway (upsample + add): neck, not backbone.
        comp = "neck" if (name == "backbone" and is_fpn) else component_of(name)
        out[comp] += c["x"]
    # Counters drop non-positive entries; restore exactness of the total.
    out["other"] = counts[""] - out["backbone"] - out["neck"] - out["head"]
    return out


def unsupported_ops_by_module(analysis) -> Dict[str, Counter]:
    """Operators fvcore could not count, attributed to the innermost module that ran them.

    Returns:
        {module name ("" = outside any sub-module): Counter(op -> number of calls)}, only
        modules with uncounted operators.
    """
    subtree = {}
    for name in analysis.by_module().keys():
        key = _strip(name)
        ops = Counter(analysis.unsupported_ops(name))
        if key not in subtree or sum(ops.values()) > sum(subtree[key].values()):
            subtree[key] = ops
    return {name: ops for name, ops in _own_counts(subtree).items() if ops}


def project_module_names(model: nn.Module, package: str = "nrd_rsp") -> List[str]:
    """Names of the sub-modules whose class is defined in ``package`` (our own modules)."""
    return [n for n, m in model.named_modules() if type(m).__module__.startswith(package + ".")]


def inference_parameter_count(model: nn.Module, analysis) -> Tuple[Dict[str, int], int]:
    """Parameters of the modules that ran in ``analysis``'s inference trace.

    Returns:
        (counts, unused): ``counts`` maps every module/parameter name prefix to the number of
        parameters under it that were used (``""``: all used ones; same format as fvcore's
        ``parameter_count``, so :func:`component_breakdown` applies); ``unused`` is the number
        of parameters of modules that never ran (training-only heads such as NRD's auxiliary
        FCN head).
    """
    uncalled = {_strip(n) for n in analysis.uncalled_modules()}
    counts: Dict[str, int] = {"": 0}
    unused = 0
    for name, p in model.named_parameters():
        parts = name.split(".")
        # Unused when the owning module or one of its ancestors never ran.
        if any(".".join(parts[:i]) in uncalled for i in range(1, len(parts))):
            unused += p.numel()
            continue
        for i in range(len(parts) + 1):
            key = ".".join(parts[:i])
            counts[key] = counts.get(key, 0) + p.numel()
    return counts, unused


# --------------------------------------------------------------------------------------------
# Timing and memory
# --------------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, amp: str):
    """Autocast context for ``amp`` in {"off", "fp16", "bf16"}. fp16 needs CUDA (CPU autocast
    supports bf16): ConfigError otherwise."""
    if amp == "off":
        return contextlib.nullcontext()
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}
    if amp not in dtypes:
        raise ConfigError(f"--amp must be off, fp16 or bf16, got '{amp}'.")
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("--amp fp16 needs CUDA (autocast on CPU supports bf16 only); use --amp bf16 or --device cuda.")
    return torch.autocast(device_type=device.type, dtype=dtypes[amp])


def time_steps(step: Callable[[], None], iters: int, warmup: int, device: torch.device) -> List[float]:
    """Run ``step`` ``warmup`` times, then ``iters`` times synchronising the device before and
    after each; returns the ``iters`` latencies in seconds."""
    if iters < 1 or warmup < 0:
        raise ConfigError(f"Need --iters >= 1 and --warmup >= 0, got {iters} and {warmup}.")
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def latency_stats(times: Sequence[float], batch_size: int) -> Dict[str, float]:
    """Median / p90 latency (ms), iterations/s and images/s from the median latency."""
    median = float(np.median(times))
    return {
        "latency_ms_median": median * 1e3,
        "latency_ms_p90": float(np.percentile(times, 90)) * 1e3,
        "iters_per_s": 1.0 / median,
        "images_per_s": batch_size / median,
    }


_cpu_peak_reset = False  # whether the last reset_peak_memory(cpu) could reset the peak RSS


def current_rss_mib() -> float:
    """Resident set size of this process now (Linux /proc; NaN elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def reset_peak_memory(device: torch.device) -> float:
    """Start a peak-memory measurement; returns the memory in use now (MiB), to subtract.

    CUDA: resets ``max_memory_allocated`` (baseline: ``memory_allocated``). CPU (Linux): writes
    ``5`` to ``/proc/self/clear_refs``, which resets the peak RSS that ``resource`` reports
    (baseline: the current RSS); elsewhere the peak stays that of the whole process.
    """
    global _cpu_peak_reset
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _cpu_peak_reset = True
    except OSError:
        _cpu_peak_reset = False
    return current_rss_mib()


def peak_memory(device: torch.device) -> Tuple[float, str]:
    """(peak memory in MiB since :func:`reset_peak_memory`, what it measures).

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors, weights included). CPU: peak resident
    set size of the whole process (``resource`` ``ru_maxrss``: Python, libraries, weights and
    activations), since the reset when ``/proc/self/clear_refs`` allowed it, else since the
    process started.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "CUDA max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_bytes = rss if sys.platform == "darwin" else rss * 1024
    since = "since the measurement started" if _cpu_peak_reset else "since the process started"
    return rss_bytes / 2**20, f"CPU peak RSS of the process (resource.ru_maxrss, {since})"


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU {name} ({torch.get_num_threads()} threads, {os.cpu_count()} cores visible)"
