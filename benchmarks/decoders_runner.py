"""Running benchmarks/decoders.py: its rows, the semantic path of one row alive for the whole
run (:class:`RowRunner`: a timed step, then FLOPs and parameters), the same in a persistent
worker process (:class:`WorkerRow`) and the interleaved rounds over all rows (:func:`run_rounds`).
"""

import logging
import multiprocessing
import os
import shlex
import time
import traceback
from collections import OrderedDict, namedtuple

from common import ROOT, run_interleaved

CS = "configs/Cityscapes-SemanticSegmentation"
COCO = "configs/COCO-PanopticSegmentation"
BENCH = "benchmarks/configs"
NUM_CLASSES = 19

Row = namedtuple("Row", "key label config opts note")
ROWS = OrderedDict(
    (r.key, r)
    for r in [
        Row(
            "semfpn_r50",
            "Semantic FPN R-50",
            f"{CS}/semantic_fpn_R_50_90k_bs16.yaml",
            [],
            "Detectron2 SemSegFPNHead (128 ch) on a 128-ch FPN.",
        ),
        Row(
            "semfpn_r101",
            "Semantic FPN R-101",
            f"{CS}/semantic_fpn_R_50_90k_bs16.yaml",
            ["MODEL.RESNETS.DEPTH", "101"],
            "As Semantic FPN R-50 with MODEL.RESNETS.DEPTH 101.",
        ),
        Row(
            "dlv3_r101_os8",
            "DeepLabV3 R-101 OS8",
            f"{BENCH}/deeplab_v3_R_101_OS8.yaml",
            [],
            "Deep stem, multi-grid 1-2-4, ASPP 12/24/36.",
        ),
        Row(
            "dlv3_r101_os16",
            "DeepLabV3 R-101 OS16",
            f"{BENCH}/deeplab_v3_R_101_OS16.yaml",
            [],
            "Deep stem, multi-grid 1-2-4, ASPP 6/12/18.",
        ),
        Row(
            "dlv3p_r50_os16",
            "DeepLabV3+ R-50 OS16",
            f"{BENCH}/deeplab_v3_plus_R_50_OS16.yaml",
            [],
            "Deep stem, multi-grid 1-2-4, ASPP 6/12/18, res2 decoder.",
        ),
        Row(
            "dlv3p_r101_os16",
            "DeepLabV3+ R-101 OS16",
            f"{BENCH}/deeplab_v3_plus_R_101_OS16.yaml",
            [],
            "Deep stem, multi-grid 1-2-4, ASPP 6/12/18, res2 decoder.",
        ),
        Row(
            "panfpn_sem_r50",
            "Panoptic FPN R-50 (semantic branch)",
            f"{COCO}/panoptic_fpn_R_50_1x.yaml",
            [],
            "Semantic branch of Detectron2's Panoptic FPN: SemSegFPNHead (CONVS_DIM 128, the "
            "config's default) on the 256-ch FPN; 19 classes instead of COCO's 54.",
        ),
        Row(
            "rsp_r50",
            "RSP R-50",
            f"{CS}/rsp_R_50_FPN_90k_bs16.yaml",
            [],
            "RSPSemSegHead on a 128-ch FPN.",
        ),
        Row(
            "rsp_r101",
            "RSP R-101",
            f"{CS}/rsp_R_101_FPN_90k_bs16.yaml",
            [],
            "RSPSemSegHead on a 128-ch FPN.",
        ),
        # The NRD configs' weights are a local file (pretrained/resnet*_v1c.pkl, converted by
        # tools/convert-mmcls-v1c-to-d2.py): random init here, as for the URL weights of the others.
        Row(
            "nrd_r50",
            "NRD R-50",
            f"{CS}/nrd_R_50_84k_bs16.yaml",
            ["MODEL.WEIGHTS", ""],
            "ResNetV1c (stem 32/32/64), output stride 32, NRDHead; "
            "the auxiliary FCN head (training "
            "only) is not part of the inference path.",
        ),
        Row(
            "nrd_r101",
            "NRD R-101",
            f"{CS}/nrd_R_101_84k_bs16.yaml",
            ["MODEL.WEIGHTS", ""],
            "As NRD R-50, ResNetV1c-101.",
        ),
        Row(
            "nrd_rsp_r50",
            "NRD+RSP R-50",
            f"{COCO}/nrd_rsp_panoptic_fpn_R_50_1x.yaml",
            [],
            "Semantic path of nrd_rsp_panoptic_fpn_R_50_1x (RSPPanopticFPN): ResNet-50 -> 256-ch "
            "FPN -> RSP -> NRDHead (controller P5', guidance P2'); "
            "instance branch not run; 19 classes.",
        ),
    ]
)

logger = logging.getLogger("nrd_rsp.benchmarks.decoders")


# --------------------------------------------------------------------------------------------
# One row: its model, a timed step, then FLOPs and parameters
# --------------------------------------------------------------------------------------------
def _normalised_input(model, height, width, device, seed=0):
    import torch

    from nrd_rsp import analysis as A

    d = model.backbone.size_divisibility or 1
    h, w = -(-height // d) * d, -(-width // d) * d
    img = A.synthetic_image(h, w, torch.Generator().manual_seed(seed)).to(device)
    return ((img - model.pixel_mean) / model.pixel_std)[None]


class RowRunner:
    """The semantic path of one row, alive for the whole run: :meth:`step` runs and times one
    inference (for the interleaved rounds), :meth:`finish` counts FLOPs and parameters."""

    def __init__(self, row, args):
        import torch

        from nrd_rsp import analysis as A
        from nrd_rsp.analysis.speed import MeasuredStep

        if args.threads:
            torch.set_num_threads(args.threads)
        self.row, self.args = row, args
        self.cfg = A.setup(
            os.path.join(ROOT, row.config),
            row.opts + ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(NUM_CLASSES)],
            device=args.device,
        )
        self.device = device = torch.device(self.cfg.MODEL.DEVICE)
        self.model = A.build_model(self.cfg)
        path = self.path = A.semantic_path(self.model).eval()
        if args.channels_last:
            path = self.path = path.to(memory_format=torch.channels_last)
        x = self.x = _normalised_input(self.model, *args.time_size, device)

        def step():
            with torch.no_grad(), A.autocast(device, args.amp):
                path(x)

        # One timed inference (seconds) per call. Peak memory: from a reset just before the
        # step (CUDA allocator; CPU peak RSS of the process), the maximum over the row's steps.
        self.step = MeasuredStep(step, device)

    def finish(self):
        """FLOPs and parameters at ``--flop-size`` and the row's memory; frees the model."""
        import torch

        from nrd_rsp import analysis as A

        row, args, cfg, path = self.row, self.args, self.cfg, self.path
        self.x = None
        result = {
            "key": row.key,
            "label": row.label,
            "config": row.config,
            "opts": " ".join(shlex.quote(o) for o in row.opts),
            "depth": cfg.MODEL.RESNETS.DEPTH,
            "peak_memory_mib": self.step.peak,
            "memory_increase_mib": self.step.increase,
            "peak_memory_kind": self.step.peak_kind,
            "uncounted_ops": {},
        }
        if args.skip_flops:
            self.model = self.path = None
            for key in (
                "gflops_total gflops_backbone gflops_neck gflops_neck_head gflops_head "
                "params_total_m params_neck_head_m params_head_m params_train_only_m"
            ).split():
                result[key] = None
            return result
        t0 = time.perf_counter()
        x = _normalised_input(self.model, *args.flop_size, self.device)
        with torch.no_grad():
            analysis = A.flop_count_analysis(path, x)
            total = analysis.total()
        flops = A.component_breakdown(A.module_counts(analysis))
        params, unused = A.inference_parameter_count(path, analysis)
        pparts = A.component_breakdown(params)
        uncounted = {m: dict(ops) for m, ops in A.unsupported_ops_by_module(analysis).items()}
        logger.info(
            f"{row.label}: {total / 1e9:.1f} GFLOPs at {args.flop_size} "
            f"in {time.perf_counter() - t0:.1f}s"
        )
        self.model = self.path = None
        return {
            **result,
            "gflops_total": total / 1e9,
            "gflops_backbone": flops["backbone"] / 1e9,
            "gflops_neck": flops["neck"] / 1e9,
            "gflops_neck_head": (flops["neck"] + flops["head"] + flops["other"]) / 1e9,
            "gflops_head": flops["head"] / 1e9,
            "params_total_m": params[""] / 1e6,
            "params_neck_head_m": (pparts["neck"] + pparts["head"] + pparts["other"]) / 1e6,
            "params_head_m": pparts["head"] / 1e6,
            "params_train_only_m": unused / 1e6,
            "uncounted_ops": uncounted,
        }


# --------------------------------------------------------------------------------------------
# One persistent worker process per row
# --------------------------------------------------------------------------------------------
def _setup_logging():
    logging.basicConfig(
        level=logging.WARNING, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S"
    )
    logger.setLevel(logging.INFO)
    logging.getLogger("nrd_rsp.analysis").setLevel(logging.INFO)


def _worker_main(conn, key, args):
    """Worker process: builds the row, then answers "step" (latency) and "finish" (results).

    The protocol, over a pipe: the worker sends ("ok", None) once the row is built; then each
    command ("step" or "finish") gets ("ok", value) or ("error", traceback); "finish" (or any
    other command, or the pipe closing) ends the worker."""
    _setup_logging()
    try:
        import nrd_rsp  # noqa: F401

        runner = RowRunner(ROWS[key], args)
        conn.send(("ok", None))
        while True:
            command = conn.recv()
            if command == "step":
                conn.send(("ok", runner.step()))
            elif command == "finish":
                conn.send(("ok", runner.finish()))
                return
            else:
                return
    except (EOFError, KeyboardInterrupt):
        return
    except BaseException:
        conn.send(("error", traceback.format_exc()))


class WorkerRow:
    """A row measured in its own process, with the interface of :class:`RowRunner`."""

    def __init__(self, row, args):
        ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
        self.row = row
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, row.key, args), daemon=True)
        self.process.start()
        child.close()

    def _call(self, command=None):
        if command is not None:
            self.conn.send(command)
        try:
            status, value = self.conn.recv()
        except EOFError:
            status, value = "error", f"worker exited with status {self.process.exitcode}"
        if status != "ok":
            raise RuntimeError(f"{self.row.label}: {value}")
        return value

    def ready(self):
        return self._call()

    def step(self):
        return self._call("step")

    def finish(self):
        try:
            return self._call("finish")
        finally:
            self.close()

    def close(self):
        self.conn.close()
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()


def run_rounds(runners, args):
    """Interleaved timing of ``{key: runner}`` (runner.step() -> seconds): ``--warmup`` untimed
    rounds, then ``--iters`` timed rounds; returns ``{key: [seconds per round]}``."""
    return run_interleaved(
        {k: r.step for k, r in runners.items()}, args.iters, args.warmup, log=logger.info
    )
