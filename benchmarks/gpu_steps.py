#!/usr/bin/env python
"""The measuring steps of ``benchmarks/gpu_check.sh``, one subcommand each, each writing one JSON
file (``--json``) as soon as it has measured, so that a later time-out loses nothing:

* ``preflight``: driver (``nvidia-smi``), CUDA, cuDNN, TF32 flags, GPUs; exit 3 without CUDA
  (``--allow-cpu``: the dry run);
* ``parity``: CPU vs ``--device`` in float32 with TF32 off: RSE, RSP and the NRD head (relative
  difference of outputs);
* ``amp``: one training step of a toy config in float32 and under autocast (bfloat16, float16):
  relative difference of every loss term and of the gradient;
* ``train-step``: training step time (median over ``--iters``) and peak memory at batch 2 of
  one config, in float32 and in each ``--amp`` precision, in this one process.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # when loaded by path
from common import environment  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
NRD_CONFIG = "configs/Cityscapes-SemanticSegmentation/nrd_R_50_84k_bs16.yaml"


def _write(path, data):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def _rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def preflight(args):
    smi = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
        capture_output=True,
        text=True,
    ) if _has("nvidia-smi") else None  # fmt: skip
    cuda = torch.cuda.is_available()
    info = {
        **environment("torch", "cuda_available"),
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "nvidia_smi": smi.stdout.strip() if smi and smi.returncode == 0 else None,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "bf16_supported": bool(cuda and torch.cuda.is_bf16_supported()),
    }
    _write(args.json, info)
    print(json.dumps(info, indent=2))
    if not cuda and not args.allow_cpu:
        print("ERROR: CUDA is not available: stopping the GPU check here.", file=sys.stderr)
        return 3
    return 0


def _has(cmd):
    return any(os.access(os.path.join(p, cmd), os.X_OK) for p in os.environ["PATH"].split(":"))


def parity(args):
    from nrd_rsp.engine import Trainer, setup_cfg
    from nrd_rsp.modeling import RSE, RSP

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    dev = torch.device(args.device)
    torch.manual_seed(0)
    fine, coarse = torch.randn(2, 128, 64, 128), torch.randn(2, 128, 32, 64)
    res = {"device": args.device, "tf32": False}
    with torch.no_grad():
        for name, m in (("RSE", RSE(128, 128)), ("RSP", RSP(128, 128))):
            ref = m.eval()(fine, coarse)
            res[name] = _rel(m.to(dev)(fine.to(dev), coarse.to(dev)), ref)
        cfg = setup_cfg(args.nrd_config, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"], quiet=True)
        head = Trainer.build_model(cfg).eval().sem_seg_head
        shapes = {"res2": (256, 4), "res4": (1024, 16), "res5": (2048, 32)}
        feats = {k: torch.randn(1, c, 512 // s, 1024 // s) for k, (c, s) in shapes.items()}
        ref = head.layers(feats)
        res["NRD head"] = _rel(head.to(dev).layers({k: v.to(dev) for k, v in feats.items()}), ref)
    _write(args.json, res)
    print(json.dumps(res, indent=2))
    return 0


def _loss_and_grad(model, batch, dev, dtype):
    from detectron2.utils.events import EventStorage

    model.zero_grad(set_to_none=True)
    with (
        EventStorage(0),
        torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=bool(dtype)),
    ):
        losses = model(batch)
    scale = 65536.0 if dtype == torch.float16 else 1.0
    (sum(losses.values()) * scale).backward()
    grads = [p.grad.flatten() / scale for p in model.parameters() if p.grad is not None]
    return {k: v.detach() for k, v in losses.items()}, torch.cat(grads)


def amp(args):
    from nrd_rsp import analysis as A

    dev = torch.device(args.device)
    res = {"device": args.device, "loss_scale_fp16": 65536.0, "configs": {}}
    for config in args.config_file:
        torch.manual_seed(0)
        cfg = A.setup(config, ["MODEL.WEIGHTS", ""], device=args.device)
        model = A.build_model(cfg, eval_mode=False)
        h, w = A.default_input_size(cfg, "train")
        batch = A.synthetic_train_batches(model, cfg, h, w, 2, num_batches=1, device=dev)[0]
        ref_losses, ref_grad = _loss_and_grad(model, batch, dev, None)
        row = {}
        for amp_name in args.amp:
            losses, grad = _loss_and_grad(model, batch, dev, DTYPES[amp_name])
            row[amp_name] = {
                "losses": {k: _rel(losses[k], ref_losses[k]) for k in ref_losses},
                "grad": _rel(grad, ref_grad),
            }
        res["configs"][config] = row
        _write(args.json, res)
    print(json.dumps(res, indent=2))
    return 0


def _measure_step(cfg, dev, amp_name, h, w, args):
    """Median step time (ms) and peak memory of one training step in ``amp_name``."""
    from detectron2.utils.events import EventStorage

    from nrd_rsp import analysis as A
    from nrd_rsp.analysis.speed import timed
    from nrd_rsp.engine import Trainer

    torch.manual_seed(0)
    model = A.build_model(cfg, eval_mode=False)
    batches = A.synthetic_train_batches(model, cfg, h, w, 2, num_batches=2, device=dev)
    optimizer = Trainer.build_optimizer(cfg, model)
    scaler = torch.amp.GradScaler(dev.type, enabled=amp_name == "fp16")
    dtype = DTYPES.get(amp_name)
    count = [0]

    def step():
        count[0] += 1
        with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=bool(dtype)):
            losses = model(batches[count[0] % 2])
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(sum(losses.values())).backward()
        scaler.step(optimizer)
        scaler.update()

    run = timed(step, dev)
    with EventStorage(0):
        for _ in range(args.warmup):
            run()
        A.reset_peak_memory(dev)
        times = [run() for _ in range(args.iters)]
    peak, kind = A.peak_memory(dev)
    return {"step_ms": 1000 * statistics.median(times), "peak_mib": peak, "peak_kind": kind}


def train_step(args):
    from nrd_rsp import analysis as A

    dev = torch.device(args.device)
    cfg = A.setup(args.config_file, args.opts, device=args.device)
    h, w = args.input_size or A.default_input_size(cfg, "train")
    res = {"config_file": args.config_file, **environment("device", "torch", device=dev),
           "batch_size": 2, "input_size": [h, w], "opts": args.opts, "rows": {}}  # fmt: skip
    for amp_name in ["off", *args.amp]:
        res["rows"][amp_name] = _measure_step(cfg, dev, amp_name, h, w, args)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        _write(args.json, res)
    print(json.dumps(res, indent=2))
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("command", choices=["preflight", "parity", "amp", "train-step"])
    p.add_argument("--json", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--allow-cpu", action="store_true")
    p.add_argument("--config-file", action="append", default=[])
    p.add_argument(
        "--nrd-config", default="configs/Cityscapes-SemanticSegmentation/nrd_R_50_84k_bs16.yaml"
    )
    p.add_argument("--amp", nargs="*", default=["bf16", "fp16"])
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--input-size", nargs=2, type=int)
    p.add_argument("--opts", nargs="*", default=[], help="config overrides (train-step)")
    args = p.parse_args(argv)
    if args.command == "train-step":
        args.config_file = args.config_file[0]
    fn = {"preflight": preflight, "parity": parity, "amp": amp, "train-step": train_step}
    return fn[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
