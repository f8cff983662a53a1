#!/usr/bin/env python
"""Cityscapes: create the ``*_gtFine_labelTrainIds.png`` files Detectron2's semantic datasets read.

Same result as cityscapesscripts' own tool
(``CITYSCAPES_DATASET=$DETECTRON2_DATASETS/cityscapes csCreateTrainIdLabelImgs``), with a progress
bar and several processes: every ``gtFine/<split>/<city>/*_gtFine_polygons.json`` is rasterised
with ``cityscapesscripts.preparation.json2labelImg.json2labelImg(..., "trainIds")`` (19 classes
0..18, 255 = ignore).

    python datasets/prepare_cityscapes.py            # $DETECTRON2_DATASETS/cityscapes
    python datasets/prepare_cityscapes.py --root /data/d2 --coarse   # /data/d2/cityscapes
"""

import glob
import multiprocessing as mp
import os
import sys

from nrd_rsp.errors import OneLineArgumentParser


def _convert_one(src):
    from cityscapesscripts.preparation.json2labelImg import json2labelImg

    try:
        json2labelImg(src, src.replace("_polygons.json", "_labelTrainIds.png"), "trainIds")
    except SystemExit:  # cityscapesscripts exits on unknown labels; don't kill the pool worker
        raise ValueError(f"cityscapesscripts could not convert {src}") from None


def main(argv=None):
    parser = OneLineArgumentParser(
        prog="prepare_cityscapes.py", description=__doc__.splitlines()[1]
    )
    parser.add_argument(
        "--root",
        default=os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")),
        help="datasets root holding cityscapes/gtFine "
        "(default: $DETECTRON2_DATASETS or ./datasets)",
    )
    parser.add_argument("--coarse", action="store_true", help="also convert gtCoarse/")
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8))
    args = parser.parse_args(argv)

    cityscapes = os.path.join(args.root, "cityscapes")
    gt_dirs = ["gtFine"] + (["gtCoarse"] if args.coarse else [])
    files = []
    for gt in gt_dirs:
        path = os.path.join(cityscapes, gt)
        if not os.path.isdir(path):
            parser.fail(
                f"directory not found: {path} "
                "(download gtFine_trainvaltest.zip; see datasets/README.md)"
            )
        files += sorted(glob.glob(os.path.join(path, "*", "*", "*_polygons.json")))
    if not files:
        parser.fail(
            f"no *_polygons.json under {os.path.join(cityscapes, 'gtFine')}/<split>/<city>/"
        )
    try:
        import cityscapesscripts  # noqa: F401
    except ImportError:
        parser.fail("cityscapesscripts is not installed (pip install cityscapesscripts)")

    from tqdm import tqdm

    try:
        with mp.Pool(max(1, args.workers)) as pool:
            for _ in tqdm(
                pool.imap_unordered(_convert_one, files, chunksize=16), total=len(files), unit="img"
            ):
                pass
    except (OSError, ValueError) as e:
        parser.fail(f"{type(e).__name__}: {e}")
    print(f"wrote {len(files)} *_labelTrainIds.png files under {cityscapes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
