#!/usr/bin/env python
"""COCO panoptic PNGs -> the stuff label PNGs Panoptic FPN trains on (``*_separated`` datasets).

For every image of ``coco/annotations/panoptic_<split>.json`` it reads
``coco/panoptic_<split>/<name>.png`` and writes ``coco/panoptic_stuff_<split>/<name>.png`` (uint8):
0 = all thing pixels, 1..K = the stuff categories in the order of the JSON's ``categories``
(= Detectron2's ``stuff_dataset_id_to_contiguous_id`` for COCO), 255 = void. The conversion is
``nrd_rsp.data.panoptic_separated.panoptic_to_stuff_semantic``, the same function the toy
generator uses.

    python datasets/prepare_panoptic_fpn.py   # $DETECTRON2_DATASETS/coco, both splits
    python datasets/prepare_panoptic_fpn.py --splits val2017 --workers 8
    python datasets/prepare_panoptic_fpn.py --panoptic-json J --panoptic-root D --output O
"""

import json
import multiprocessing as mp
import os
import sys

from nrd_rsp.errors import OneLineArgumentParser


def _convert_one(job):
    import numpy as np
    from PIL import Image

    from nrd_rsp.data.panoptic_separated import panoptic_to_stuff_semantic

    pan_path, out_path, segments_info, id_map = job
    with Image.open(pan_path) as im:
        pan = np.asarray(im.convert("RGB"))
    Image.fromarray(panoptic_to_stuff_semantic(pan, segments_info, id_map)).save(out_path)


def convert(panoptic_json, panoptic_root, output_dir, workers):
    """Convert every annotation of one panoptic JSON; returns the number of PNGs written."""
    from tqdm import tqdm

    from nrd_rsp.data.panoptic_separated import stuff_id_map

    with open(panoptic_json) as f:
        obj = json.load(f)
    id_map = stuff_id_map(obj["categories"])
    os.makedirs(output_dir, exist_ok=True)
    jobs = [
        (
            os.path.join(panoptic_root, ann["file_name"]),
            os.path.join(output_dir, ann["file_name"]),
            ann["segments_info"],
            id_map,
        )
        for ann in obj["annotations"]
    ]
    desc = os.path.basename(os.path.normpath(output_dir))
    if workers <= 1:
        for job in tqdm(jobs, desc=desc, unit="img"):
            _convert_one(job)
    else:
        with mp.Pool(workers) as pool:
            for _ in tqdm(
                pool.imap_unordered(_convert_one, jobs, chunksize=16),
                total=len(jobs),
                desc=desc,
                unit="img",
            ):
                pass
    return len(jobs)


def main(argv=None):
    parser = OneLineArgumentParser(
        prog="prepare_panoptic_fpn.py",
        description="Convert COCO panoptic PNGs into the stuff PNGs used by Panoptic FPN.",
    )
    parser.add_argument(
        "--root",
        default=os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")),
        help="datasets root holding coco/ (default: $DETECTRON2_DATASETS or ./datasets)",
    )
    parser.add_argument("--splits", nargs="+", default=["train2017", "val2017"])
    parser.add_argument("--panoptic-json", help="convert this JSON instead of --root/--splits")
    parser.add_argument("--panoptic-root", help="its PNG directory (with --panoptic-json)")
    parser.add_argument("--output", help="output directory (with --panoptic-json)")
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8))
    args = parser.parse_args(argv)

    explicit = [args.panoptic_json, args.panoptic_root, args.output]
    if any(explicit) and not all(explicit):
        parser.error("--panoptic-json, --panoptic-root and --output go together")
    if all(explicit):
        tasks = [(args.panoptic_json, args.panoptic_root, args.output)]
    else:
        coco = os.path.join(args.root, "coco")
        tasks = [
            (
                os.path.join(coco, "annotations", f"panoptic_{s}.json"),
                os.path.join(coco, f"panoptic_{s}"),
                os.path.join(coco, f"panoptic_stuff_{s}"),
            )
            for s in args.splits
        ]
    for pan_json, pan_root, _ in tasks:
        if not os.path.isfile(pan_json):
            parser.fail(f"panoptic JSON not found: {pan_json} (see datasets/README.md)")
        if not os.path.isdir(pan_root):
            parser.fail(
                f"panoptic PNG directory not found: {pan_root} "
                "(unzip annotations/panoptic_*.zip; see datasets/README.md)"
            )
    try:
        import nrd_rsp.data.panoptic_separated  # noqa: F401
    except ImportError as e:
        parser.fail(f"cannot import nrd_rsp ({e}); run `pip install -e .` first")
    try:
        for pan_json, pan_root, out in tasks:
            n = convert(pan_json, pan_root, out, args.workers)
            print(f"wrote {n} stuff PNGs to {out}")
    except (OSError, ValueError, KeyError) as e:
        parser.fail(f"{type(e).__name__}: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
