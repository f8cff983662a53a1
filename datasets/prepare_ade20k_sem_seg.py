#!/usr/bin/env python
"""ADE20K (SceneParsing, ADEChallengeData2016) annotations -> Detectron2's 150-class labels.

The release stores 0 = "other" and 1..150 = classes; Detectron2's ``ade20k_sem_seg_*`` datasets
read ``annotations_detectron2/{training,validation}/*.png`` with label - 1 (0..149) and 0 -> 255
(ignored):

    python datasets/prepare_ade20k_sem_seg.py        # $DETECTRON2_DATASETS/ADEChallengeData2016
"""

import multiprocessing as mp
import os
import sys

from nrd_rsp.errors import OneLineArgumentParser


def convert_label(label):
    """(H, W) uint8 ADE20K label (0 = other, 1..150) -> 0..149, 255 = ignore."""
    import numpy as np

    return (np.asarray(label, dtype=np.uint8) - np.uint8(1)).astype(np.uint8)  # 0 wraps to 255


def _convert_one(job):
    import numpy as np
    from PIL import Image

    src, dst = job
    with Image.open(src) as im:
        label = np.asarray(im)
    Image.fromarray(convert_label(label)).save(dst)


def main(argv=None):
    parser = OneLineArgumentParser(
        prog="prepare_ade20k_sem_seg.py", description=__doc__.splitlines()[1]
    )
    parser.add_argument(
        "--root",
        default=os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")),
        help="datasets root holding ADEChallengeData2016/ "
        "(default: $DETECTRON2_DATASETS or ./datasets)",
    )
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8))
    args = parser.parse_args(argv)

    base = os.path.join(args.root, "ADEChallengeData2016")
    splits = []
    for split in ("training", "validation"):
        src = os.path.join(base, "annotations", split)
        if not os.path.isdir(src):
            parser.fail(
                f"annotation directory not found: {src} "
                "(unzip ADEChallengeData2016.zip; see datasets/README.md)"
            )
        splits.append((src, os.path.join(base, "annotations_detectron2", split)))

    from tqdm import tqdm

    try:
        for src, dst in splits:
            os.makedirs(dst, exist_ok=True)
            jobs = [
                (os.path.join(src, f), os.path.join(dst, f))
                for f in sorted(os.listdir(src))
                if f.endswith(".png")
            ]
            if not jobs:
                parser.fail(f"no .png annotations in {src}")
            with mp.Pool(max(1, args.workers)) as pool:
                for _ in tqdm(
                    pool.imap_unordered(_convert_one, jobs, chunksize=32),
                    total=len(jobs),
                    desc=os.path.basename(dst),
                    unit="img",
                ):
                    pass
            print(f"wrote {len(jobs)} labels to {dst}")
    except (OSError, ValueError) as e:
        parser.fail(f"{type(e).__name__}: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
