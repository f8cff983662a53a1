#!/usr/bin/env python
"""Export a semantic or panoptic segmentation model to TorchScript (traced) or ONNX.

    python tools/export_model.py \\
        --config-file configs/Cityscapes-SemanticSegmentation/rsp_R_50_FPN_90k_bs16.yaml \\
        --format onnx --output export/ --input-size 1024 2048 MODEL.WEIGHTS model_final_abcdef.pth

The exported function maps ONE RAW IMAGE to logits:

* input ``image``: float32 ``[1, 3, H, W]``, pixel values 0-255 in the config's ``INPUT.FORMAT``
  channel order (BGR for the Cityscapes/ADE20K/PASCAL Context configs, RGB for the toy ones),
  NOT normalised: ``MODEL.PIXEL_MEAN/STD`` normalisation and padding to the backbone's size
  divisibility happen inside, exactly as in ``SemanticSegmentor``;
* output ``logits``: float32 ``[1, K, H, W]``, per-class scores before softmax at the input
  resolution (``argmax(1)`` gives the label map), identical to
  ``model([{"image": ...}])[0]["sem_seg"]``.

``H, W`` are fixed at export time (``--input-size``, else the ``--sample-image`` size, else
``INPUT.MIN_SIZE_TEST x INPUT.MAX_SIZE_TEST``); resize images to that size before inference.
Writes ``model.ts`` or ``model.onnx`` plus ``export_info.json`` (input/output spec, class names,
max |logit| difference to the eager model on the sample input, which must be <= --tolerance).
Models that use SyncBN are exported with frozen (inference-mode) BatchNorm, which is the same
function.

Panoptic models (``PanopticFPN``, ``RSPPanopticFPN``) export their whole graph (backbone, RSP,
semantic head, RPN, box and mask heads, NMS; ROIAlign as ONNX ``RoiAlign``, opset 17) with ANY
input size ``image [1, 3, H, W]``; the outputs (``pred_boxes``, ``pred_classes``,
``pred_masks``, ``scores``, ``image_size``, ``sem_seg``) are those of
``model.inference(..., do_postprocess=False)``, and the panoptic combination runs outside the
graph (``nrd_rsp.export.ExportedModel`` / ``postprocess_panoptic``); ``export_info.json`` also
holds the ``MODEL.PANOPTIC_FPN.COMBINE`` thresholds. The check against the eager model is
relative for values above 1 (box coordinates). They are traced on the
``--sample-image``, else on the first test image of the config. ``--run-eval`` evaluates the
exported file on ``DATASETS.TEST`` with the evaluators of ``train_net.py --eval-only``.
"""

import argparse
import json
import os
import sys

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import SemanticSegmentor
from torch import nn

import nrd_rsp  # noqa: F401  (registers heads and meta-architectures)
from nrd_rsp.data.catalog import check_dataset_available
from nrd_rsp.engine import Trainer, load_model_for_eval, setup_cfg
from nrd_rsp.errors import ConfigError, OneLineArgumentParser, exit_on_error
from nrd_rsp.export import (
    PANOPTIC_DYNAMIC_AXES,
    PANOPTIC_OUTPUTS,
    ExportedModel,
    check_exportable,
    combine_settings,
    panoptic_tracing_adapter,
)
from nrd_rsp.safe_loading import add_allow_unsafe_config_argument

FORMATS = ("torchscript", "onnx")
_FILENAMES = {"torchscript": "model.ts", "onnx": "model.onnx"}


class ExportError(RuntimeError):
    """The export ran but its result is wrong (e.g. differs from the eager model)."""


class SemanticSegmentationExportWrapper(nn.Module):
    """``image [1, 3, H, W]`` raw float pixels (``INPUT.FORMAT`` order) -> ``logits [1, K, H, W]``.

    Runs the wrapped ``SemanticSegmentor`` exactly as at inference (normalisation, padding to
    ``backbone.size_divisibility``, head, crop + resize back to ``H x W``), for one image.
    """

    def __init__(self, model: SemanticSegmentor):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model([{"image": image[0]}])[0]["sem_seg"].unsqueeze(0)


def load_export_model(cfg):
    """``(model, kind)``: the model of ``cfg`` with ``MODEL.WEIGHTS`` loaded, in eval mode,
    SyncBN layers as ``FrozenBatchNorm2d``; ``kind`` is ``"semantic"`` or ``"panoptic"``
    (anything else is a one-line ``ConfigError``)."""
    model = load_model_for_eval(cfg)  # a missing MODEL.WEIGHTS file is a ConfigError
    kind = check_exportable(cfg, model)
    model.eval()
    if any(isinstance(m, nn.SyncBatchNorm) for m in model.modules()):
        model = FrozenBatchNorm2d.convert_frozen_batchnorm(model)
    return model.eval(), kind


def build_export_model(cfg):
    """The semantic model of ``cfg`` as a :class:`SemanticSegmentationExportWrapper`."""
    model, kind = load_export_model(cfg)
    if kind != "semantic":
        raise ConfigError(f"{cfg.MODEL.META_ARCHITECTURE} is not a semantic model.")
    return SemanticSegmentationExportWrapper(model).eval()


def first_test_image(cfg):
    """``[1, 3, H, W]`` raw float image: the first image of ``DATASETS.TEST[0]`` resized as at
    test time (``INPUT.MIN/MAX_SIZE_TEST``), or None without a readable test set."""
    if not len(cfg.DATASETS.TEST):
        return None
    from detectron2.data import DatasetCatalog
    from detectron2.data import transforms as T

    try:
        file_name = DatasetCatalog.get(cfg.DATASETS.TEST[0])[0]["file_name"]
        img = utils.read_image(file_name, cfg.INPUT.FORMAT)
    except Exception:  # the test set is not on this machine: the caller traces on noise
        return None
    aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    img = aug.get_transform(img).apply_image(img)
    return torch.as_tensor(np.ascontiguousarray(img.transpose(2, 0, 1)), dtype=torch.float32)[None]


def make_sample_input(cfg, input_size=None, sample_image=None, seed=0):
    """``[1, 3, H, W]`` float32 raw image in ``cfg.INPUT.FORMAT``: the sample image (resized to
    ``input_size`` when given) or uniform noise in [0, 255]."""
    if sample_image is not None:
        if not os.path.isfile(sample_image):
            raise ConfigError(f"Sample image not found: '{sample_image}'.")
        img = utils.read_image(sample_image, format=cfg.INPUT.FORMAT)  # H, W, 3 uint8
        if input_size is not None:
            import cv2

            img = cv2.resize(img, (input_size[1], input_size[0]), interpolation=cv2.INTER_LINEAR)
        return torch.as_tensor(np.ascontiguousarray(img.transpose(2, 0, 1)), dtype=torch.float32)[
            None
        ]
    if input_size is None:
        input_size = (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    h, w = input_size
    if h <= 0 or w <= 0:
        raise ConfigError(f"--input-size must be positive, got {h} {w}.")
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, h, w, generator=g) * 255.0


def trace(wrapper, image):
    """``torch.jit.trace`` of the wrapper on ``image``; shapes are fixed to ``image``'s."""
    with torch.no_grad():
        return torch.jit.trace(wrapper, (image,), check_trace=False)


def export_torchscript(traced, path):
    """Save a traced model (see :func:`trace`) as TorchScript."""
    traced.save(path)
    return path


def export_onnx(traced, image, path, output_names=("logits",), dynamic_axes=None, opset=17):
    """Convert a traced model (see :func:`trace`) to ONNX with the TorchScript-based exporter:
    input ``image``, outputs ``output_names`` (``dynamic_axes`` as in ``torch.onnx.export``)."""
    with torch.no_grad():
        torch.onnx.export(
            traced,
            (image,),
            path,
            dynamo=False,
            opset_version=opset,
            input_names=["image"],
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    return path


def run_exported(path, image):
    """Run an exported ``model.ts`` / ``model.onnx`` on ``image``; returns a numpy array."""
    if path.endswith(".onnx"):
        import onnxruntime as ort

        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return sess.run(["logits"], {"image": image.numpy()})[0]
    with torch.no_grad():
        return torch.jit.load(path, map_location="cpu")(image).numpy()


def _compare(expected, got, names, tolerance, relative=False):
    """Max |diff| over all outputs (with ``relative``: ``|diff| / max(1, |eager value|)``, for
    box coordinates in pixels); ``ExportError`` on a shape mismatch or above ``tolerance``."""
    diff = 0.0
    for name, e, g in zip(names, expected, got):
        e, g = np.asarray(e, dtype=np.float64), np.asarray(g, dtype=np.float64)
        if e.shape != g.shape:
            raise ExportError(f"Exported output '{name}' is {g.shape}, eager {e.shape}.")
        if e.size:
            scale = np.maximum(1.0, np.abs(e)) if relative else 1.0
            diff = max(diff, float((np.abs(e - g) / scale).max()))
    if not np.isfinite(diff) or diff > tolerance:
        raise ExportError(
            f"Exported model differs from the eager model: max |diff| {diff:.3g} > {tolerance}."
        )
    return diff


def _export_panoptic(model, fmt, image, path, tolerance):
    """Trace ``model`` on ``image``, write ``path``; returns (info part, max |diff|)."""
    adapter = panoptic_tracing_adapter(model, image)
    with torch.no_grad():
        expected = [t.numpy() for t in adapter(image)]
        if len(expected[0]) == 0:
            raise ExportError(
                "The tracing image gives no detections: pass a --sample-image with objects."
            )
        traced = torch.jit.trace(adapter, (image,), check_trace=False)
    if fmt == "torchscript":
        traced.save(path)
    else:
        export_onnx(traced, image, path, PANOPTIC_OUTPUTS, PANOPTIC_DYNAMIC_AXES)
    info = {
        "kind": "panoptic",
        "combine": combine_settings(model),
        "outputs": [
            {"name": n, "shape_traced": list(e.shape), "dtype": str(e.dtype)}
            for n, e in zip(PANOPTIC_OUTPUTS, expected)
        ],
    }
    got = [t.numpy() for t in ExportedModel(path, info).run(image)]
    return info, _compare(expected, got, PANOPTIC_OUTPUTS, tolerance, relative=True)


def _export_semantic(model, fmt, image, path, tolerance):
    wrapper = SemanticSegmentationExportWrapper(model).eval()
    with torch.no_grad():
        expected = wrapper(image).numpy()
    traced = trace(wrapper, image)
    if fmt == "torchscript":
        export_torchscript(traced, path)
    else:
        export_onnx(traced, image, path)
    diff = _compare([expected], [run_exported(path, image)], ["logits"], tolerance)
    output = {"name": "logits", "shape": list(expected.shape), "dtype": "float32", "softmax": False}
    return {"kind": "semantic", "output": output}, diff


def export(
    cfg, fmt, output_dir, input_size=None, sample_image=None, tolerance=1e-3, config_file=None
):
    """Export the semantic or panoptic model of ``cfg`` and check it against the eager model.

    Returns:
        dict written to ``output_dir/export_info.json`` (``"path"``: the exported file).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {FORMATS}, got '{fmt}'.")
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"  # exported graphs are traced on CPU
    cfg.OUTPUT_DIR = output_dir  # the checkpointer creates OUTPUT_DIR: not the training one
    cfg.freeze()
    image = make_sample_input(cfg, input_size, sample_image)  # bad size / image: fail early
    model, kind = load_export_model(cfg)
    if kind == "panoptic" and sample_image is None and input_size is None:
        test_image = first_test_image(cfg)
        image = image if test_image is None else test_image
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, _FILENAMES[fmt])
    run = _export_panoptic if kind == "panoptic" else _export_semantic
    part, diff = run(model, fmt, image, path, tolerance)
    meta = MetadataCatalog.get(cfg.DATASETS.TEST[0]) if len(cfg.DATASETS.TEST) else None
    h, w = image.shape[-2:]
    info = {
        "path": path,
        "format": fmt,
        "config_file": config_file,
        "weights": cfg.MODEL.WEIGHTS,
        "input": {
            "name": "image",
            "shape": [1, 3, h, w] if kind == "semantic" else [1, 3, "H", "W"],
            "traced_shape": [1, 3, h, w],
            "dtype": "float32",
            "channel_order": cfg.INPUT.FORMAT,
            "value_range": [0, 255],
            "normalised": False,
        },
        **part,
        "classes": list(getattr(meta, "stuff_classes", []) or []) if meta is not None else [],
        "max_abs_diff_vs_eager": diff,
    }
    with open(os.path.join(output_dir, "export_info.json"), "w") as f:
        json.dump(info, f, indent=2)
    return info


def evaluate_exported(cfg, path, output_dir):
    """Evaluate the exported ``path`` on ``cfg.DATASETS.TEST`` with the evaluators and loaders
    of ``train_net.py --eval-only`` (``nrd_rsp.engine.Trainer``); returns the results."""
    from collections import OrderedDict

    from detectron2.evaluation import inference_on_dataset

    model = ExportedModel(path)
    results = OrderedDict()
    for name in cfg.DATASETS.TEST:
        evaluator = Trainer.build_evaluator(
            cfg, name, output_folder=os.path.join(output_dir, "inference", name)
        )
        res = inference_on_dataset(model, Trainer.build_test_loader(cfg, name), evaluator)
        results.update(res if len(cfg.DATASETS.TEST) == 1 else {name: res})
    with open(os.path.join(output_dir, "eval_results.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results


def build_parser():
    p = OneLineArgumentParser(prog="export_model.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--config-file", required=True, metavar="FILE")
    add_allow_unsafe_config_argument(p)
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--output", default="./output/export", metavar="DIR")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"))
    p.add_argument(
        "--sample-image", metavar="IMG", help="trace and check with this image instead of noise"
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=1e-3,
        help="max |output diff| to the eager model (panoptic: relative above 1)",
    )
    p.add_argument(
        "--run-eval", action="store_true", help="evaluate the exported model on DATASETS.TEST"
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides")
    return p


@exit_on_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    cfg = setup_cfg(args.config_file, args.opts)
    if args.run_eval:  # before exporting: a missing test set is one line, not a late traceback
        for name in cfg.DATASETS.TEST:
            check_dataset_available(name)
    try:
        info = export(
            cfg,
            args.format,
            args.output,
            args.input_size,
            args.sample_image,
            args.tolerance,
            args.config_file,
        )
    except ExportError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    print(f"max |output diff| vs eager: {info['max_abs_diff_vs_eager']:.3g}")
    if args.run_eval:
        ecfg = cfg.clone()
        ecfg.defrost()
        ecfg.MODEL.DEVICE = "cpu"
        ecfg.freeze()
        res = evaluate_exported(ecfg, info["path"], args.output)
        print(json.dumps(res))
    print(info["path"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
