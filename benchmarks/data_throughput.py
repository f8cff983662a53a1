#!/usr/bin/env python
"""Training data pipeline throughput: images/s per worker of each real config's training mapper
against Detectron2's stock ``DatasetMapper`` with the same augmentations.

    python benchmarks/data_throughput.py                  # real image sizes (about 10 minutes)
    python benchmarks/data_throughput.py --rounds 5 --output-dir /tmp/dt
    python benchmarks/data_throughput.py --tiny --output-dir /tmp/dt   # the stand-ins' sizes
    python benchmarks/data_throughput.py --render         # the .md again from the JSON

Data: the format-exact stand-ins of ``tests/standins.py`` (official layouts, then the project's
``datasets/prepare_*.py``), written to a temporary directory at the datasets' image sizes
(``SIZES``): Cityscapes 1024x2048 PNG, COCO-size JPEG with panoptic labels (Panoptic FPN
format: stuff PNG + instance polygons), ADE20K-size JPEG, PASCAL VOC-size JPEG. The training
dicts come from Detectron2's dataset catalog, as in training.

Rows: the real configs (``configs/{Cityscapes,COCO-Panoptic,ADE20K,PascalContext}*``, not
``Base-*``), grouped when their mappers are built from the same settings (``INPUT``, the ignore
value, ``MODEL.MASK_ON``, the training set). Per row, three mappers of the same dataset dicts:

* ``stock``: ``detectron2.data.DatasetMapper(is_train=True)`` with the augmentation objects the
  config's mapper builds (semantic: random keep-ratio resize, crop with the single-category cap,
  flip, the config's photometric distortion; Panoptic FPN: ``DatasetMapper(cfg)``'s own, plus
  the photometric distortion if any). It reads labels as uint8 ``L`` and resizes the whole image
  before cropping.
* ``resize_then_crop`` (semantic rows): ``SemanticSegDatasetMapper(crop_window_resize=False)``,
  the project's generic path, which also resizes the whole image.
* ``project``: ``nrd_rsp.data.mappers.build_train_mapper(cfg)``, what training uses (semantic:
  resize and crop on the crop window, ``nrd_rsp.data.crop_resize``).

Timing: one process, one thread (torch, OpenCV, OMP). Interleaved rounds
(``nrd_rsp.analysis.speed.interleaved_rounds``): each round maps every training image of the
dataset once with each mapper, the mappers' order rotated per round, each mapper seeded alike
(``np.random.seed(round)``) so that all three draw the same ratios, crops and flips. Per mapper:
images/s = images / median round time. Ratios per round: stock time / mapper time (above 1:
faster than stock), median and interquartile range. The machine's load average is recorded
before and after. Writes ``data_throughput.json`` and ``data_throughput.md`` (rendered from the
JSON alone) to ``--output-dir`` (default ``benchmarks/results``).
"""

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import glob  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # when loaded by path
from common import environment, package_versions  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_GLOBS = ("Cityscapes-*", "COCO-Panoptic*", "ADE20K-*", "PascalContext-*")
# Image sizes (H, W) per dataset for the real-size run, one per training image of the stand-in
SIZES = {
    "cityscapes": [(1024, 2048)] * 3,
    "coco": [(480, 640), (640, 480), (427, 640), (480, 640)],
    "ade20k": [(512, 683), (683, 512), (512, 683)],
    "pascal_context": [(375, 500), (500, 375), (333, 500)],
}
DATASET_OF = {
    "cityscapes_fine_sem_seg_train": "cityscapes",
    "coco_2017_train_panoptic_separated": "coco",
    "ade20k_sem_seg_train": "ade20k",
    "pascal_context_59_sem_seg_train": "pascal_context",
}
MAPPERS = ("stock", "resize_then_crop", "project")


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
def _standins():
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import standins

    return standins


def write_datasets(root, tiny=False):
    """The four stand-ins under ``root`` at ``SIZES`` (``tiny``: their own small sizes),
    prepared by the project's scripts. Returns {dataset: [(H, W), ...]} of the training images."""
    s = _standins()
    if not tiny:
        s.CITYSCAPES_IMAGE_SIZE = SIZES["cityscapes"][0]
        s.COCO_IMAGES = dict(
            s.COCO_IMAGES,
            train=tuple(
                (i, hw, *rest) for (i, _, *rest), hw in zip(s.COCO_IMAGES["train"], SIZES["coco"])
            ),
        )
        s.ADE20K_IMAGES = dict(s.ADE20K_IMAGES, train=tuple(SIZES["ade20k"]))
        s.PASCAL_CONTEXT_IMAGES = dict(
            s.PASCAL_CONTEXT_IMAGES,
            train=tuple(
                (i, hw)
                for (i, _), hw in zip(s.PASCAL_CONTEXT_IMAGES["train"], SIZES["pascal_context"])
            ),
        )
    s.write_all(root)
    s.prepare_all(root)


def dataset_dicts(root, names):
    """{training set name: its dicts} from Detectron2's catalog, the stand-ins registered."""
    from detectron2.data import DatasetCatalog

    with _standins().registered_at(root):
        return {n: DatasetCatalog.get(n) for n in names}


def _image_hw(path):
    from PIL import Image

    with Image.open(path) as im:
        return [im.height, im.width]


def _file_stats(dicts):
    """Mean file sizes (bytes) of the images and of their labels, and the image sizes."""
    sizes = [os.path.getsize(d["file_name"]) for d in dicts]
    labels = [os.path.getsize(d["sem_seg_file_name"]) for d in dicts if "sem_seg_file_name" in d]
    return {
        "images": len(dicts),
        "image_hw": [_image_hw(d["file_name"]) for d in dicts],
        "image_format": os.path.splitext(dicts[0]["file_name"])[1].lstrip(".").upper(),
        "image_bytes_mean": int(np.mean(sizes)),
        "label_bytes_mean": int(np.mean(labels)) if labels else 0,
    }


# ---------------------------------------------------------------------------------------------
# Mappers
# ---------------------------------------------------------------------------------------------
def real_configs():
    found = []
    for pattern in CONFIG_GLOBS:
        for path in sorted(glob.glob(os.path.join(ROOT, "configs", pattern, "*.yaml"))):
            if not os.path.basename(path).startswith("Base-"):
                found.append(os.path.relpath(path, ROOT))
    return found


def load_cfg(config):
    from detectron2.config import get_cfg

    from nrd_rsp import add_nrd_rsp_config

    cfg = get_cfg()
    add_nrd_rsp_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, config))
    return cfg


def mapper_groups(configs):
    """[{"configs": [...], "cfg": cfg}] of configs whose training mappers have the same settings."""
    groups = {}
    for config in configs:
        cfg = load_cfg(config)
        key = (
            cfg.INPUT.dump(),
            cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            cfg.MODEL.MASK_ON,
            tuple(cfg.DATASETS.TRAIN),
        )
        groups.setdefault(key, {"configs": [], "cfg": cfg})["configs"].append(config)
    return list(groups.values())


def build_mappers(cfg):
    """{"stock", ["resize_then_crop",] "project"} mappers of ``cfg`` (see the module docstring)."""
    from detectron2.data import DatasetMapper

    from nrd_rsp.data.mappers import (
        PanopticFPNDatasetMapper,
        SemanticSegDatasetMapper,
        build_train_mapper,
    )

    project = build_train_mapper(cfg)
    if isinstance(project, SemanticSegDatasetMapper):
        augs = SemanticSegDatasetMapper.from_config(cfg, True)["augmentations"]
        stock = DatasetMapper(is_train=True, augmentations=augs, image_format=cfg.INPUT.FORMAT)
        generic = SemanticSegDatasetMapper(cfg, True, crop_window_resize=False)
        return {"stock": stock, "resize_then_crop": generic, "project": project}
    assert isinstance(project, PanopticFPNDatasetMapper), type(project)
    stock_args = DatasetMapper.from_config(cfg, True)
    stock_args["augmentations"] = PanopticFPNDatasetMapper.from_config(cfg, True)["augmentations"]
    return {"stock": DatasetMapper(**stock_args), "project": project}


def _describe(cfg, mappers):
    name = cfg.INPUT.DATASET_MAPPER_NAME
    row = {
        "mapper": type(mappers["project"]).__name__,
        "mapper_name": name,
        "format": cfg.INPUT.FORMAT,
        "color_aug": cfg.INPUT.COLOR_AUG_TYPE if cfg.INPUT.COLOR_AUG else "none",
    }
    if name == "sem_seg":
        row["crop_hw"] = list(cfg.INPUT.CROP.SIZE) if cfg.INPUT.CROP.ENABLED else None
        row["resize_base_hw"] = list(cfg.INPUT.RESIZE_BASE_SIZE)
        row["resize_scale_range"] = list(cfg.INPUT.RESIZE_SCALE_RANGE)
    else:
        row["min_size_train"] = list(cfg.INPUT.MIN_SIZE_TRAIN)
        row["max_size_train"] = cfg.INPUT.MAX_SIZE_TRAIN
    return row


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------
def _round_step(mapper, dicts, counter):
    """A timed step: map every dict once, the global generators seeded by the round number."""

    def run():
        import torch

        np.random.seed(counter["round"])
        torch.manual_seed(counter["round"])
        start = time.perf_counter()
        for d in dicts:
            mapper(d)
        return time.perf_counter() - start

    return run


def time_group(mappers, dicts, rounds, warmup):
    """{mapper: [seconds per round]} in interleaved rounds."""
    from nrd_rsp.analysis.speed import interleaved_rounds

    counter = {"round": 0}

    def next_round(r, _):
        counter["round"] = r + 1

    steps = {k: _round_step(m, dicts, counter) for k, m in mappers.items()}
    return interleaved_rounds(steps, rounds=rounds, warmup=warmup, on_round=next_round)


def summarize(times, n_images):
    from nrd_rsp.analysis.speed import quartiles, ratio_stats

    out = {}
    for key, ts in times.items():
        q25, med, q75 = quartiles(ts)
        out[key] = {
            "round_seconds": ts,
            "images_per_s": n_images / med,
            "images_per_s_q25": n_images / q75,
            "images_per_s_q75": n_images / q25,
        }
        if key != "stock":  # stock time / this mapper's time, per round
            out[key]["speedup"] = ratio_stats(times["stock"], ts)
    return out


def _meta(args, configs):
    env = environment("cpu", "cpu_count", "python")
    return {
        "command": " ".join(["python benchmarks/data_throughput.py", *args.argv]),
        "rounds": args.rounds,
        "warmup_rounds": args.warmup,
        "tiny": args.tiny,
        "threads": 1,
        **env,
        "versions": package_versions(
            "torch", "detectron2", pillow="PIL", numpy="numpy", opencv="cv2"
        ),
        "configs": configs,
    }


def run(args):
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    configs = [c for c in real_configs() if not args.configs or any(s in c for s in args.configs)]
    groups = mapper_groups(configs)
    report = {"meta": _meta(args, configs), "datasets": {}, "rows": []}
    with tempfile.TemporaryDirectory(prefix="data_throughput_") as root:
        write_datasets(root, tiny=args.tiny)
        names = sorted({g["cfg"].DATASETS.TRAIN[0] for g in groups})
        all_dicts = dataset_dicts(root, names)
        for name, dicts in all_dicts.items():
            report["datasets"][DATASET_OF.get(name, name)] = dict(_file_stats(dicts), name=name)
        report["meta"]["load_before"] = list(os.getloadavg())
        for g in groups:
            cfg = g["cfg"]
            name = cfg.DATASETS.TRAIN[0]
            mappers = build_mappers(cfg)
            print(f"{name}: {', '.join(g['configs'])}", flush=True)
            times = time_group(mappers, all_dicts[name], args.rounds, args.warmup)
            row = dict(_describe(cfg, mappers), dataset=DATASET_OF.get(name, name))
            row["configs"] = g["configs"]
            row["mappers"] = summarize(times, len(all_dicts[name]))
            report["rows"].append(row)
            print(_row_line(row), flush=True)
        report["meta"]["load_after"] = list(os.getloadavg())
    return report


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def _speedup(m):
    s = m["speedup"]
    return f"{s['ratio_median']:.2f} [{s['ratio_q25']:.2f}, {s['ratio_q75']:.2f}]"


def _row_line(row):
    m = row["mappers"]
    cells = [f"{k} {m[k]['images_per_s']:.2f} img/s" for k in MAPPERS if k in m]
    return "  " + ", ".join(cells) + f"; project / stock {_speedup(m['project'])}"


def _settings(row):
    if row["mapper_name"] == "sem_seg":
        crop = "x".join(str(v) for v in row["crop_hw"]) if row["crop_hw"] else "none"
        lo, hi = row["resize_scale_range"]
        base = "x".join(str(v) for v in row["resize_base_hw"])
        return f"{base} x {lo}-{hi}, crop {crop}, {row['color_aug']} colour, {row['format']}"
    sizes = "/".join(str(v) for v in row["min_size_train"])
    return f"short side {sizes}, max {row['max_size_train']}, {row['color_aug']} colour"


def _dataset_lines(report):
    lines = ["| Dataset | Training images (H x W) | Format | Mean file size: image, label |"]
    lines.append("|:---|:---|:---|:---|")
    for key, d in report["datasets"].items():
        hw = ", ".join(f"{h}x{w}" for h, w in d["image_hw"])
        lines.append(
            f"| {key} (`{d['name']}`) | {hw} | {d['image_format']} | "
            f"{d['image_bytes_mean'] / 1e3:.0f} kB, {d['label_bytes_mean'] / 1e3:.0f} kB |"
        )
    return lines


def _result_lines(report):
    lines = [
        "| Dataset | Configs | Augmentations | Stock img/s | Resize-then-crop img/s "
        "| Project img/s | Project / stock [IQR] | Resize-then-crop / stock [IQR] |",
        "|:---|:---|:---|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        m = row["mappers"]
        configs = "<br>".join(f"`{os.path.basename(c)}`" for c in row["configs"])
        generic = m.get("resize_then_crop")
        cells = [
            row["dataset"],
            configs,
            _settings(row),
            f"{m['stock']['images_per_s']:.2f}",
            f"{generic['images_per_s']:.2f}" if generic else "–",
            f"{m['project']['images_per_s']:.2f}",
            _speedup(m["project"]),
            _speedup(generic) if generic else "–",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_markdown(report):
    meta = report["meta"]
    v = meta["versions"]
    load = {k: ", ".join(f"{x:.2f}" for x in meta[k]) for k in ("load_before", "load_after")}
    lines = [
        "# Training data pipeline throughput",
        "",
        f"`{meta['command']}`. One process, {meta['threads']} thread; {meta['rounds']} "
        f"interleaved rounds after {meta['warmup_rounds']} warm-up round(s); each round maps "
        "every training image of the dataset once with each mapper, all seeded alike. CPU: "
        f"{meta['cpu']}, {meta['cpu_count']} cores shared with other processes: load averages "
        f"(over one, five and fifteen minutes) {load['load_before']} before and "
        f"{load['load_after']} after. torch {v['torch']}, Detectron2 {v['detectron2']}, "
        f"Pillow {v['pillow']}, NumPy {v['numpy']}, OpenCV {v['opencv']}.",
        "",
        "Images/s per worker: images / median round time. Ratios: stock round time / mapper "
        "round time of the same round (above one: faster than stock), median [first "
        "quartile, third quartile] over the rounds. Stock is Detectron2's `DatasetMapper` with "
        "the config's augmentation objects; project is `build_train_mapper(cfg)`; "
        "resize-then-crop is the project's generic path (`crop_window_resize=False`).",
        "",
        *_dataset_lines(report),
        "",
        *_result_lines(report),
    ]
    if meta["tiny"]:
        lines += ["", "Tiny run (the stand-ins' own image sizes): not the datasets' sizes."]
    return "\n".join(lines) + "\n"


def write_outputs(report, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "data_throughput.json"), "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    with open(os.path.join(out_dir, "data_throughput.md"), "w") as f:
        f.write(render_markdown(report))


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--tiny", action="store_true", help="the stand-ins' own (small) image sizes")
    p.add_argument("--configs", nargs="*", help="only configs whose path contains one of these")
    p.add_argument("--output-dir", default=os.path.join(ROOT, "benchmarks", "results"))
    p.add_argument("--render", action="store_true", help="rewrite the .md from the JSON")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.render:
        with open(os.path.join(args.output_dir, "data_throughput.json")) as f:
            report = json.load(f)
    else:
        report = run(args)
    write_outputs(report, args.output_dir)
    print(f"wrote {os.path.join(args.output_dir, 'data_throughput.md')}")


if __name__ == "__main__":
    main()
