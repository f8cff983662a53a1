"""FLOPs, activations and parameters, split into the components of a model (definitions: the
docstring of :mod:`nrd_rsp.analysis`)."""

from collections import Counter
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..modeling.window_attention import plain_ops

__all__ = [
    "COMPONENTS",
    "EXTRA_ZERO_COST_OPS",
    "activation_count_analysis",
    "component_breakdown",
    "component_of",
    "flop_count_analysis",
    "inference_parameter_count",
    "module_counts",
    "project_module_names",
    "step_flops",
    "unsupported_ops_by_module",
]

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
    # The reductions of RSE's spelled-out softmax: 0, as fvcore counts aten::softmax.
    "aten::amax",
    "aten::sum",
)

_WRAPPER_PREFIX = "model."  # TracingAdapter stores the model as ``.model``


def _configure(analysis):
    analysis.set_op_handle(**{op: None for op in EXTRA_ZERO_COST_OPS})
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings(
        "none"
    )
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
    from detectron2.export import TracingAdapter
    from fvcore.nn import ActivationCountAnalysis

    wrapper = TracingAdapter(model, inputs, allow_non_tensor=True)
    return _configure(ActivationCountAnalysis(wrapper, wrapper.flattened_inputs))


def _strip(name: str) -> str:
    if name == "model":
        return ""
    return name[len(_WRAPPER_PREFIX) :] if name.startswith(_WRAPPER_PREFIX) else name


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


def step_flops(step: Callable[[], None]) -> int:
    """FLOPs of one call of ``step`` (an inference or a whole training step: forward, backward
    and optimizer), counted by torch's ``FlopCounterMode`` on the operators actually run:
    matmuls and convolutions and their gradients, 2 FLOPs per multiply-add (fvcore counts 1).
    The RSE and RSP run their plain ops (the arithmetic of docs/RSP.md, Eq. 1-4), so the count
    is the model's arithmetic, not that of the fused kernels' block layout."""
    with plain_ops(), FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())
