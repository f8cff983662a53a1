#!/usr/bin/env python
"""Where the time of an RSP model goes: forward and backward per module, and per operator, for
a training step and an inference forward, against its baseline (torch.profiler, CPU, one thread).

    python benchmarks/rsp_profile.py                      # the committed results/rsp_profile.*
    python benchmarks/rsp_profile.py --pairs semantic --ops fused --output-dir /tmp/prof
    python benchmarks/rsp_profile.py --tiny --repeats 1 --output-dir /tmp/prof   # smoke run
    python benchmarks/rsp_profile.py --render             # the .md again from the JSON

Pairs (baseline, RSP model, input size; random weights, batch 1), with the overrides of
``benchmarks/panoptic_speed.sh``:

* ``panoptic``: Panoptic FPN R-50 and RSP Panoptic FPN R-50
  (``configs/COCO-PanopticSegmentation/{panoptic_fpn,rsp_panoptic_fpn}_R_50_1x.yaml``), 640x960;
  training with BN in the ResNet and LR 0, inference without detections
  (``MODEL.ROI_HEADS.SCORE_THRESH_TEST 1.0``);
* ``semantic``: Semantic FPN R-50 and RSP R-50
  (``configs/Cityscapes-SemanticSegmentation/{semantic_fpn_R_50_90k_bs16,rsp_R_50_FPN_90k_bs16}``),
  a 512x1024 crop.

``--ops``: each pair runs with the RSE/RSP ``plain`` ops (autograd through the window gather,
masking and softmax: the reference, what tracing and CUDA run;
``nrd_rsp.modeling.window_attention.plain_ops``) and with the ``fused`` ops (what eager training
and inference run on CPU).

Per task, both models are built and kept alive; ``--warmup`` untimed steps each, then
``--repeats`` rounds of one step without and one with the profiler per model, the models'
order alternating; every number is the median over the rounds.

Attribution. Every module's forward runs inside a ``record_function`` range named after it
(forward pre/post hooks); a forward operator belongs to its innermost module, a group of the
table (``GROUPS``; the fused ``F + W_o c`` counts as ``rsp.proj``). The backward of an operator
(the autograd engine's ``evaluate_function: <Node>`` event) carries the sequence number of the
forward operator that created the node and goes to its group; ``AccumulateGrad`` (gradients into
``.grad``) and the optimizer step are groups of their own. Times are the profiler's CPU times
(self time of forward operators, the whole node in backward), so the groups add up to the
profiled step. The profiler adds overhead per operator: the wall times with and without it are
both reported.

Writes ``rsp_profile.json`` (all numbers) and ``rsp_profile.md`` (rendered from the JSON alone)
to ``--output-dir`` (default ``benchmarks/results``).
"""

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import collections  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, environment  # noqa: E402
from rsp_profile_report import ACCUMULATE, MODES, OPTIMIZER, OTHER, render  # noqa: E402

PAN = "configs/COCO-PanopticSegmentation/"
SEM = "configs/Cityscapes-SemanticSegmentation/"
PAIRS = {  # as benchmarks/panoptic_speed.sh
    "panoptic": {
        "configs": [PAN + "panoptic_fpn_R_50_1x.yaml", PAN + "rsp_panoptic_fpn_R_50_1x.yaml"],
        "size": [640, 960],
        "train_opts": ["MODEL.RESNETS.NORM", "BN", "SOLVER.BASE_LR", "0.0"],
        "inference_opts": ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "1.0"],
    },
    "semantic": {
        "configs": [SEM + "semantic_fpn_R_50_90k_bs16.yaml", SEM + "rsp_R_50_FPN_90k_bs16.yaml"],
        "size": [512, 1024],
        "train_opts": [],
        "inference_opts": [],
    },
}
_PREFIXES = {  # group -> module-name patterns (after stripping "sem_seg_head." from RSP)
    "rsp.rse": ".rse",
    "rsp.proj": ".proj",
    "rsp.fuse": ".fuse",
}


def group_of(module: str) -> str:
    """Table row of a module name (``sem_seg_head.rsp.*`` of RSPSemSegHead counts as RSP)."""
    if module.startswith("sem_seg_head.rsp"):
        module = module[len("sem_seg_head.") :]
    if module == "rsp" or module.startswith("rsp."):
        for group, part in _PREFIXES.items():
            if part + "." in module + "." and module.startswith("rsp.stages."):
                return group
        return "rsp (sums, skip)"
    for prefix in ("backbone.bottom_up", "backbone", "sem_seg_head", "proposal_generator"):
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    if module == "roi_heads" or module.startswith("roi_heads."):
        return "roi_heads"
    return OTHER


def _module_ranges(model):
    """Forward hooks opening a ``record_function`` range ``module:<name>`` around every module's
    forward; returns the hook handles."""
    from torch.autograd.profiler import record_function

    stack = []
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def pre(_m, _inputs, name=name):
            rf = record_function("module:" + name)
            rf.__enter__()
            stack.append(rf)

        def post(_m, _inputs, _outputs):
            stack.pop().__exit__(None, None, None)

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    return handles


# Fused functions (nrd_rsp.modeling.window_attention) run by a module for a submodule's weights.
_FUNCTION_MODULE = {"_ProjectAdd": "proj"}


def _innermost_module(event):
    parent, sub = event, None
    while parent is not None:
        if parent.name in _FUNCTION_MODULE and sub is None:
            sub = _FUNCTION_MODULE[parent.name]
        if parent.name.startswith("module:"):
            name = parent.name[len("module:") :]
            return f"{name}.{sub}" if sub else name
        parent = parent.cpu_parent
    return ""


def attribute(events, optimizer_range=None):
    """Per group: forward and backward CPU ms; per (phase, operator): self CPU ms, both also
    restricted to the RSP groups."""
    fwd = collections.Counter()
    bwd = collections.Counter()
    ops = {"forward": collections.Counter(), "backward": collections.Counter()}
    rsp_ops = {"forward": collections.Counter(), "backward": collections.Counter()}
    seq_group = {}
    backward_nodes = []
    # In start order: the operator that created the node with sequence number N is the last to
    # start with N (operators that create no node before it see N too, those after it N + 1).
    for e in sorted(events, key=lambda e: e.time_range.start):
        if e.name.startswith(("module:", "step:")):
            continue
        under_backward = _backward_ancestor(e)
        if under_backward is None:
            in_opt = _has_ancestor(e, "step:optimizer")
            group = OPTIMIZER if in_opt else group_of(_innermost_module(e))
            if not in_opt and e.sequence_nr >= 0:
                seq_group[e.sequence_nr] = group
            fwd[group] += e.self_cpu_time_total / 1e3
            ops["forward"][e.name] += e.self_cpu_time_total / 1e3
            if group.startswith("rsp"):
                rsp_ops["forward"][e.name] += e.self_cpu_time_total / 1e3
        else:
            ops["backward"][e.name] += e.self_cpu_time_total / 1e3
            if e is under_backward:
                backward_nodes.append(e)
    for node in backward_nodes:
        if "AccumulateGrad" in node.name:
            group = ACCUMULATE
        else:
            group = seq_group.get(node.sequence_nr, OTHER)
        bwd[group] += node.cpu_time_total / 1e3
        if group.startswith("rsp"):
            for sub in _subtree(node):
                rsp_ops["backward"][sub.name] += sub.self_cpu_time_total / 1e3
    return fwd, bwd, ops, rsp_ops


def _backward_ancestor(event):
    """The outermost ``autograd::engine::evaluate_function`` event containing ``event`` (or
    itself), None for forward events."""
    found = None
    e = event
    while e is not None:
        if e.name.startswith("autograd::engine::evaluate_function"):
            found = e
        e = e.cpu_parent
    return found


def _has_ancestor(event, name):
    e = event
    while e is not None:
        if e.name == name:
            return True
        e = e.cpu_parent
    return False


def _subtree(event):
    yield event
    for child in event.cpu_children:
        yield from _subtree(child)


def _top(counter, n):
    return [[name, round(ms, 2)] for name, ms in counter.most_common(n)]


class _Model:
    """One config built for one task, with its step."""

    def __init__(self, config_file, task, size, opts):
        import torch
        from torch.autograd.profiler import record_function

        from nrd_rsp import analysis as A
        from nrd_rsp.engine import Trainer

        height, width = size
        self.config_file = config_file
        cfg = A.setup(config_file, opts, "cpu")
        self.model = model = A.build_model(cfg, eval_mode=task == "inference")
        if task == "train":
            batch = A.synthetic_train_batches(model, cfg, height, width, 1, num_batches=1)[0]
            optimizer = Trainer.build_optimizer(cfg, model)

            def step():
                with record_function("step:forward"):
                    loss = sum(model(batch).values())
                optimizer.zero_grad(set_to_none=True)
                with record_function("step:backward"):
                    loss.backward()
                with record_function("step:optimizer"):
                    optimizer.step()

        else:
            inputs = A.synthetic_inference_inputs(height, width, 1)

            def step():
                with torch.no_grad():
                    model(inputs)

        self.step = step
        self.runs = []

    def run(self):
        """One step without the profiler (wall time), then one profiled step."""
        from torch.profiler import ProfilerActivity, profile

        t0 = time.perf_counter()
        self.step()
        plain = time.perf_counter() - t0
        handles = _module_ranges(self.model)
        try:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                t0 = time.perf_counter()
                self.step()
                profiled = time.perf_counter() - t0
        finally:
            for h in handles:
                h.remove()
        fwd, bwd, ops, rsp_ops = attribute(prof.events())
        self.runs.append(
            {
                "step_ms": plain * 1e3,
                "profiled_step_ms": profiled * 1e3,
                "forward_ms": dict(fwd),
                "backward_ms": dict(bwd),
                "ops_self_ms": {k: dict(v) for k, v in ops.items()},
                "rsp_ops_self_ms": {k: dict(v) for k, v in rsp_ops.items() if v},
            }
        )


def _median_dict(dicts, top=None):
    keys = set().union(*dicts)
    med = {k: statistics.median([d.get(k, 0.0) for d in dicts]) for k in keys}
    if top is None:
        return med
    return [[k, round(v, 2)] for k, v in sorted(med.items(), key=lambda kv: -kv[1])[:top]]


def summarize(runs, top):
    """Medians over the repeats: wall times, per group, per operator."""
    out = {
        "repeats": len(runs),
        "step_ms": statistics.median([r["step_ms"] for r in runs]),
        "step_ms_runs": [r["step_ms"] for r in runs],
        "profiled_step_ms": statistics.median([r["profiled_step_ms"] for r in runs]),
        "forward_ms": _median_dict([r["forward_ms"] for r in runs]),
        "backward_ms": _median_dict([r["backward_ms"] for r in runs]),
        "top_ops_self_ms": {
            k: _median_dict([r["ops_self_ms"][k] for r in runs], top)
            for k in ("forward", "backward")
        },
    }
    phases = set().union(*(r["rsp_ops_self_ms"] for r in runs))
    out["rsp_top_ops_self_ms"] = {
        k: _median_dict([r["rsp_ops_self_ms"].get(k, {}) for r in runs], top) for k in phases
    }
    return out


def profile_pair(spec, size, opts, warmup, repeats, top):
    """Both configs of a pair, each task: the models alive side by side, warm-up, then
    ``repeats`` rounds of one step of each (their order alternating), medians."""
    from detectron2.utils.events import EventStorage

    results = [{"config_file": c, "input_size": list(size)} for c in spec["configs"]]
    for task in ("train", "inference"):
        task_opts = [*opts, *spec[f"{task}_opts"]]
        models = [_Model(c, task, size, task_opts) for c in spec["configs"]]
        with EventStorage(0):
            for m in models:
                for _ in range(warmup):
                    m.step()
            for rep in range(repeats):
                for m in models if rep % 2 == 0 else models[::-1]:
                    m.run()
        for res, m in zip(results, models):
            res[task] = summarize(m.runs, top)
        del models
    return results


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def _load():
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--pairs", nargs="+", choices=list(PAIRS), default=list(PAIRS))
    p.add_argument("--ops", nargs="+", choices=list(MODES), default=list(MODES))
    p.add_argument("--size", nargs=2, type=int, metavar=("H", "W"), help="one size for all pairs")
    p.add_argument("--tiny", action="store_true", help="64x96 (smoke run)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="profiled rounds (medians)")
    p.add_argument("--top", type=int, default=12, help="operators listed per phase")
    p.add_argument("--output-dir", default=os.path.join(ROOT, "benchmarks", "results"))
    p.add_argument("--render", action="store_true", help="rewrite the .md from the JSON")
    args = p.parse_args(argv)
    json_path = os.path.join(args.output_dir, "rsp_profile.json")
    md_path = os.path.join(args.output_dir, "rsp_profile.md")
    if args.render:
        with open(json_path) as f:
            data = json.load(f)
        with open(md_path, "w") as f:
            f.write(render(data))
        return 0

    import torch
    from detectron2.utils.logger import setup_logger

    import nrd_rsp  # noqa: F401
    from nrd_rsp.modeling.window_attention import plain_ops

    setup_logger(name="nrd_rsp", abbrev_name="nrd_rsp")
    torch.set_num_threads(1)
    data = {
        "argv": " ".join(argv if argv is not None else sys.argv[1:]),
        "environment": environment("date", "device", "cpu", "cpu_count", "torch", "detectron2"),
        "warmup": args.warmup,
        "repeats": args.repeats,
        "load_before": _load(),
        "pairs": [],
    }
    opts = ["MODEL.WEIGHTS", ""]
    for name in args.pairs:
        spec = PAIRS[name]
        size = [64, 96] if args.tiny else (args.size or spec["size"])
        for ops in args.ops:
            with plain_ops() if ops == "plain" else contextlib.nullcontext():
                models = profile_pair(spec, size, opts, args.warmup, args.repeats, args.top)
            data["pairs"].append({"name": name, "size": size, "ops": ops, "models": models})
    data["load_after"] = _load()
    os.makedirs(args.output_dir, exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(data, f, indent=1)
    with open(md_path, "w") as f:
        f.write(render(data))
    print(render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
