#!/usr/bin/env python
"""FLOPs and parameters of every shipped real-dataset config: MODEL_ZOO.md's cost columns.

    python benchmarks/config_costs.py                       # all configs, 1024x2048
    python benchmarks/config_costs.py \\
        --configs Cityscapes-SemanticSegmentation/rsp_R_50_FPN_90k_bs16.yaml \\
        --output-dir /tmp/costs

Every leaf config (``Base-*`` excluded) under ``configs/{Cityscapes-SemanticSegmentation,
ADE20K-SemanticSegmentation, PascalContext-SemanticSegmentation, COCO-PanopticSegmentation}`` is
built as ``tools/analyze_model.py`` builds it (``nrd_rsp.analysis.setup`` / ``build_model``:
SyncBN -> BN, one process, CPU) with ``MODEL.WEIGHTS ""`` (random initialisation, seed 0) and
counted on one synthetic inference input of ``--input-size`` (default 1024x2048; the image of
``nrd_rsp.analysis.synthetic_inference_inputs``, seed 0), in eval mode, with the definitions of
``projects/nrd_rsp/analysis/`` (``cost.py``):

* **GFLOPs total**: fvcore count of the whole inference forward (one fused multiply-add = one
  flop), pre/post-processing included;
* **GFLOPs decoder**: neck + head (FPN / RSP + ``sem_seg_head``, and for panoptic models the
  RPN and ROI heads), i.e. everything after the ResNet except pre/post-processing;
* **Params**: all parameters of the model as built (fvcore ``parameter_count``), training-only
  modules such as NRD's auxiliary FCN head included.

Panoptic totals depend on the number of RPN proposals and detections of the instance branch,
hence on the random weights (fixed by the seed) and the image; both are reported.

Writes ``config_costs.json`` (every count) and ``config_costs.md`` (the table, with the command
line and date) to ``--output-dir`` (default ``benchmarks/results``);
``tests/benchmarks/test_config_costs.py`` checks that MODEL_ZOO.md's rows equal the JSON.
"""

import argparse
import json
import logging
import os
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # when loaded by path
from common import ROOT, environment  # noqa: E402

CONFIGS_DIR = os.path.join(ROOT, "configs")
# Config groups, in table order.
GROUPS = (
    "Cityscapes-SemanticSegmentation",
    "ADE20K-SemanticSegmentation",
    "PascalContext-SemanticSegmentation",
    "COCO-PanopticSegmentation",
)
# Cityscapes' class count: other semantic datasets name theirs in the Model column.
DEFAULT_SEM_CLASSES = 19
# Model families, in table order within a group (baselines first).
FAMILY_ORDER = (
    "Semantic FPN (baseline)",
    "Panoptic FPN (baseline)",
    "RSP",
    "RSP Panoptic FPN",
    "NRD",
    "RSP Panoptic FPN + NRD semantic branch",
)
SEED = 0

logger = logging.getLogger("nrd_rsp.benchmarks.config_costs")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--configs",
        nargs="+",
        metavar="GROUP/NAME.yaml",
        help="configs relative to configs/ (default: every leaf config of the groups above)",
    )
    p.add_argument("--input-size", nargs=2, type=int, default=[1024, 2048], metavar=("H", "W"))
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch (default: torch's default)"
    )
    p.add_argument("--output-dir", default=os.path.join(ROOT, "benchmarks", "results"))
    return p.parse_args(argv)


def list_configs():
    """Every leaf config of :data:`GROUPS`, as ``Group/name.yaml``."""
    found = []
    for group in GROUPS:
        d = os.path.join(CONFIGS_DIR, group)
        found += [
            f"{group}/{f}"
            for f in sorted(os.listdir(d))
            if f.endswith(".yaml") and not f.startswith("Base-")
        ]
    return found


def model_label(cfg):
    """The table's "Model" column, from the config: family, then what sets it apart."""
    meta = cfg.MODEL.META_ARCHITECTURE
    head = cfg.MODEL.SEM_SEG_HEAD.NAME
    if meta == "PanopticFPN":
        return "Panoptic FPN (baseline)"
    if meta == "RSPPanopticFPN":
        return "RSP Panoptic FPN + NRD semantic branch" if head == "NRDHead" else "RSP Panoptic FPN"
    label = {
        "SemSegFPNHead": "Semantic FPN (baseline)",
        "RSPSemSegHead": "RSP",
        "NRDHead": "NRD",
    }.get(head, head)
    extras = []
    r = cfg.MODEL.RESNETS
    if head == "NRDHead" and r.STEM_TYPE == "deeplab" and r.STEM_OUT_CHANNELS != 64:
        # NRD's default encoder is ResNetV1c (stem 32/32/64); name any other stem.
        c = r.STEM_OUT_CHANNELS
        extras.append(
            f"DeepLab stem {c // 2}/{c // 2}/{c}" if c == 128 else f"stem {c // 2}/{c // 2}/{c}"
        )
    k = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    if k != DEFAULT_SEM_CLASSES:
        extras.append(f"{k} classes")
    return ", ".join([label] + extras)


def _family(label):
    for i, name in sorted(
        enumerate(FAMILY_ORDER), key=lambda t: -len(t[1])
    ):  # longest prefix first
        if label == name or label.startswith(name + ","):
            return i
    return len(FAMILY_ORDER)


def measure(config, input_size):
    """Counts of one config (relative to configs/)."""
    import torch
    from fvcore.nn import parameter_count

    from nrd_rsp import analysis as A

    cfg = A.setup(os.path.join(CONFIGS_DIR, config), ["MODEL.WEIGHTS", ""], device="cpu")
    torch.manual_seed(SEED)
    model = A.build_model(cfg)  # eval mode
    inputs = A.synthetic_inference_inputs(*input_size, batch_size=1, device="cpu", seed=SEED)
    with torch.no_grad():
        analysis = A.flop_count_analysis(model, inputs)
        total = int(analysis.total())
    flops = {k: int(v) for k, v in A.component_breakdown(A.module_counts(analysis)).items()}
    counts = parameter_count(model)
    params = {k: int(v) for k, v in A.component_breakdown(counts).items()}
    _, train_only = A.inference_parameter_count(model, analysis)
    decoder = flops["neck"] + flops["head"]
    return {
        "config": config,
        "model": model_label(cfg),
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "sem_seg_head": cfg.MODEL.SEM_SEG_HEAD.NAME,
        "depth": int(cfg.MODEL.RESNETS.DEPTH),
        "num_classes": int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES),
        "flops": {"total": total, "decoder": decoder, **flops},
        "params": {"total": int(counts[""]), "train_only": int(train_only), **params},
        "gflops_total": total / 1e9,
        "gflops_decoder": decoder / 1e9,
        "params_m": counts[""] / 1e6,
        **_instance_counts(model, inputs),
    }


def _instance_counts(model, inputs):
    """RPN proposals and final detections of a panoptic model's instance branch on ``inputs``
    (None for semantic models): the ROI box head runs on every proposal, the mask head on every
    detection, so both change the count."""
    import torch

    if getattr(model, "roi_heads", None) is None:
        return {"num_proposals": None, "num_detections": None}
    seen = {}

    def record(module, args, output):  # returns None: the output is kept
        seen.setdefault("proposals", len(output[0][0]))

    hook = model.proposal_generator.register_forward_hook(record)
    try:
        with torch.no_grad():
            out = model(inputs)
    finally:
        hook.remove()
    return {
        "num_proposals": int(seen["proposals"]),
        "num_detections": int(len(out[0]["instances"])),
    }


def fmt_gflops(value):
    return f"{value:.1f}"


def fmt_params(value):
    return f"{value:.2f}"


def table_order(r):
    """Sort key: group (:data:`GROUPS`), model family (baselines first), depth, name."""
    group = r["config"].split("/")[0]
    order = GROUPS.index(group) if group in GROUPS else len(GROUPS)
    return (order, _family(r["model"]), r["depth"], r["config"])


def table_rows(results):
    """Markdown rows ``| configs | model | total / decoder | params |``, in table order; adjacent
    configs of one group with the same model label and identical counts share a row."""
    rows = []  # [configs, result]
    for r in sorted(results, key=table_order):
        prev = rows[-1] if rows else None
        if (
            prev
            and prev[1]["config"].split("/")[0] == r["config"].split("/")[0]
            and prev[1]["model"] == r["model"]
            and prev[1]["flops"]["total"] == r["flops"]["total"]
            and prev[1]["flops"]["decoder"] == r["flops"]["decoder"]
            and prev[1]["params"]["total"] == r["params"]["total"]
        ):
            prev[0].append(r["config"])
            continue
        rows.append([[r["config"]], r])
    lines = []
    for configs, r in rows:
        names = ", ".join([f"`{configs[0]}`"] + [f"`{c.split('/', 1)[1]}`" for c in configs[1:]])
        lines.append(
            f"| {names} | {r['model']} | {fmt_gflops(r['gflops_total'])} "
            f"/ {fmt_gflops(r['gflops_decoder'])} "
            f"| {fmt_params(r['params_m'])} |"
        )
    return lines


TABLE_HEADER = ["| Config | Model | GFLOPs (total / decoder) | Params (M) |", "|---|---|---|---|"]


def write_markdown(path, results, meta):
    h, w = meta["input_size"]
    lines = [
        "# Cost of the shipped configs",
        "",
        f"Generated by `{meta['command']}` on {meta['date']} "
        f"({meta['device']}; torch {meta['torch']}, "
        f"detectron2 {meta['detectron2']}; {meta['seconds']:.0f} s).",
        "",
        f"* One synthetic {h}x{w} image "
        f"(`nrd_rsp.analysis.synthetic_inference_inputs`, seed {SEED}), batch 1, "
        "inference (eval mode), the model's whole forward (`nrd_rsp.analysis.flop_count_analysis`: "
        "fvcore, one fused multiply-add = one flop, element-wise ops not counted).",
        '* Models built as `tools/analyze_model.py` builds them (SyncBN -> BN), `MODEL.WEIGHTS ""` '
        f"(random initialisation, `torch.manual_seed({SEED})`).",
        "* **Decoder** = neck + head (`nrd_rsp.analysis.component_breakdown`): FPN / RSP, the "
        "semantic head and, for panoptic models, the RPN and ROI heads; everything after the "
        "ResNet except pre/post-processing.",
        "* **Params** = all parameters of the model as built (fvcore `parameter_count`), "
        "including training-only modules (NRD's auxiliary FCN head, not run at inference and not "
        "in the FLOPs).",
        "* Panoptic totals depend on the number of RPN proposals (the box head runs on each) and "
        "of detections (the mask head runs on each), i.e. on the random weights and the image: "
        "columns *Proposals* and *Detections* below. With random weights both are far below a "
        "trained model's (up to 1000 proposals and 100 detections per image), so the panoptic "
        "totals are lower bounds.",
        "",
        *TABLE_HEADER,
        *table_rows(results),
        "",
        "## Breakdown",
        "",
        "| Config | GFLOPs backbone | GFLOPs neck | GFLOPs head | GFLOPs other "
        "| Params backbone (M) "
        "| Params neck+head (M) | Train-only params (M) | Proposals | Detections |",
        "|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(results, key=table_order):
        f, p = r["flops"], r["params"]
        props, dets = (
            "" if r[k] is None else str(r[k]) for k in ("num_proposals", "num_detections")
        )
        lines.append(
            f"| `{r['config']}` | {f['backbone'] / 1e9:.2f} | {f['neck'] / 1e9:.2f} "
            f"| {f['head'] / 1e9:.2f} "
            f"| {f['other'] / 1e9:.2f} | {p['backbone'] / 1e6:.2f} "
            f"| {(p['neck'] + p['head']) / 1e6:.2f} "
            f"| {p['train_only'] / 1e6:.2f} | {props} | {dets} |"
        )
    lines.append("")
    with open(path, "w") as fh:
        fh.write("\n".join(lines))


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S"
    )
    logger.setLevel(logging.INFO)
    import torch
    from tqdm import tqdm

    import nrd_rsp  # noqa: F401  (registers heads, meta-architectures, datasets)

    if args.threads:
        torch.set_num_threads(args.threads)
    configs = args.configs or list_configs()
    missing = [c for c in configs if not os.path.isfile(os.path.join(CONFIGS_DIR, c))]
    if missing:
        print(f"ERROR: no such config under configs/: {', '.join(missing)}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    results = []
    bar = tqdm(configs, desc="Counting", unit="config")
    for config in bar:
        bar.set_postfix_str(config.split("/")[-1])
        t0 = time.perf_counter()
        r = measure(config, args.input_size)
        r["seconds"] = time.perf_counter() - t0
        results.append(r)
        bar.write(
            f"{config}: {fmt_gflops(r['gflops_total'])} "
            f"/ {fmt_gflops(r['gflops_decoder'])} GFLOPs, "
            f"{fmt_params(r['params_m'])} M params ({r['seconds']:.0f} s)"
        )
    meta = {
        "command": " ".join(["python benchmarks/config_costs.py"] + [shlex.quote(a) for a in argv]),
        **environment("date"),
        "input_size": list(args.input_size),
        "seed": SEED,
        **environment("device", "torch", "detectron2", device="cpu"),
        "seconds": time.perf_counter() - start,
    }
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "config_costs.json"), "w") as fh:
        json.dump({"meta": meta, "configs": {r["config"]: r for r in results}}, fh, indent=2)
        fh.write("\n")
    write_markdown(os.path.join(args.output_dir, "config_costs.md"), results, meta)
    logger.info(f"Wrote config_costs.json and config_costs.md to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
