"""Cost analysis and speed measurement, shared by ``tools/analyze_model.py``,
``tools/benchmark.py`` and ``benchmarks/`` (``from nrd_rsp import analysis as A``):

* :mod:`.model`: config and model (:func:`setup`, :func:`build_model`, :class:`SemanticPath`);
* :mod:`.synthetic`: synthetic inputs and training batches;
* :mod:`.cost`: FLOPs, activations, parameters and their split into components;
* :mod:`.speed`: timing, peak memory, the device.

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

from .cost import (
    COMPONENTS,
    EXTRA_ZERO_COST_OPS,
    activation_count_analysis,
    component_breakdown,
    component_of,
    flop_count_analysis,
    inference_parameter_count,
    module_counts,
    project_module_names,
    step_flops,
    unsupported_ops_by_module,
)
from .model import (
    SemanticPath,
    build_model,
    default_input_size,
    make_single_process,
    resolve_device,
    semantic_path,
    setup,
)
from .speed import (
    autocast,
    current_rss_mib,
    device_description,
    latency_stats,
    peak_memory,
    reset_peak_memory,
    synchronize,
    time_steps,
)
from .synthetic import synthetic_image, synthetic_inference_inputs, synthetic_train_batches

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
    "step_flops",
    "synchronize",
    "synthetic_image",
    "synthetic_inference_inputs",
    "synthetic_train_batches",
    "time_steps",
    "unsupported_ops_by_module",
]
