#!/usr/bin/env python
"""PASCAL Context (official release) -> 59- and 60-class label PNGs + split image folders.

Inputs (see datasets/README.md):

* PASCAL VOC 2010 (``VOCtrainval_03-May-2010.tar``): ``VOCdevkit/VOC2010/JPEGImages/*.jpg`` and
  the split lists ``ImageSets/Main/{train,val}.txt`` (4998 / 5105 images);
* the PASCAL Context annotations (``trainval.tar.gz``): one ``<image id>.mat`` per image whose
  ``LabelMap`` (uint16) holds the 1-based index into the 459-class ``labels.txt`` (0 = unlabeled).

Outputs under ``$DETECTRON2_DATASETS/pascal_context``:

* ``images/{train,val}/<id>.jpg`` (hard links to JPEGImages when possible, else copies);
* ``annotations_ctx60/{train,val}/<id>.png``: 0 = background (every class outside the 59 and
  unlabeled pixels), 1..59 = the 59 classes;
* ``annotations_ctx59/{train,val}/<id>.png``: 0..58 = the 59 classes, 255 = background (ignored).

    python datasets/prepare_pascal_context.py \\
        --voc2010 $DETECTRON2_DATASETS/VOCdevkit/VOC2010 \\
        --context $DETECTRON2_DATASETS/VOCdevkit/VOC2010/trainval
"""

import multiprocessing as mp
import os
import shutil
import sys

from nrd_rsp.errors import OneLineArgumentParser

# (id in the 459-class labels.txt, name): the 59 most frequent classes (59_labels.txt of the
# release; the list used by mmsegmentation / Mask2Former). Order = label order.
PASCAL_CONTEXT_59 = [
    (2, "aeroplane"), (9, "bag"), (18, "bed"), (19, "bedclothes"), (22, "bench"),
    (23, "bicycle"), (25, "bird"), (31, "boat"), (33, "book"), (34, "bottle"),
    (44, "building"), (45, "bus"), (46, "cabinet"), (59, "car"), (65, "cat"),
    (68, "ceiling"), (72, "chair"), (80, "cloth"), (85, "computer"), (98, "cow"),
    (104, "cup"), (105, "curtain"), (113, "dog"), (115, "door"), (144, "fence"),
    (158, "floor"), (159, "flower"), (162, "food"), (187, "grass"), (189, "ground"),
    (207, "horse"), (220, "keyboard"), (232, "light"), (258, "motorbike"), (259, "mountain"),
    (260, "mouse"), (284, "person"), (295, "plate"), (296, "platform"), (308, "pottedplant"),
    (324, "road"), (326, "rock"), (347, "sheep"), (349, "shelves"), (354, "sidewalk"),
    (355, "sign"), (360, "sky"), (366, "snow"), (368, "sofa"), (397, "table"),
    (415, "track"), (416, "train"), (420, "tree"), (424, "truck"), (427, "tvmonitor"),
    (440, "wall"), (445, "water"), (454, "window"), (458, "wood"),
]  # fmt: skip


_LUT = None


def label_lut():
    """uint8 lookup table, 459-class index -> 60-class label (0 = background)."""
    global _LUT
    if _LUT is None:
        import numpy as np

        _LUT = np.zeros(65536, dtype=np.uint8)
        for i, (ctx_id, _) in enumerate(PASCAL_CONTEXT_59):
            _LUT[ctx_id] = i + 1
    return _LUT


def convert_label_map(label_map, lut):
    """(H, W) 459-class LabelMap -> (ctx60, ctx59) uint8 label maps."""
    import numpy as np

    ctx60 = lut[np.asarray(label_map, dtype=np.uint16)]
    ctx59 = (ctx60 - np.uint8(1)).astype(np.uint8)  # background 0 wraps to 255
    return ctx60, ctx59


def _place_image(src, dst, mode):
    if os.path.lexists(dst):
        return
    if mode == "hardlink":
        try:
            os.link(src, dst)
            return
        except OSError:
            pass  # other filesystem: copy
    if mode == "symlink":
        os.symlink(os.path.abspath(src), dst)
    else:
        shutil.copyfile(src, dst)


def _convert_one(job):
    import scipy.io
    from PIL import Image

    mat, jpg, out60, out59, out_jpg, mode = job
    label_map = scipy.io.loadmat(mat)["LabelMap"]
    ctx60, ctx59 = convert_label_map(label_map, label_lut())
    Image.fromarray(ctx60).save(out60)
    Image.fromarray(ctx59).save(out59)
    _place_image(jpg, out_jpg, mode)


def _check_labels_txt(path):
    """Warn (one line per mismatch) if labels.txt names differ from the built-in 59-class list."""
    names = {}
    with open(path) as f:
        for line in f:
            if ":" in line:
                k, v = line.split(":", 1)
                if k.strip().isdigit():
                    names[int(k)] = v.strip()
    for ctx_id, name in PASCAL_CONTEXT_59:
        if names.get(ctx_id, name).replace(" ", "") != name:
            print(
                f"warning: {path}: class {ctx_id} is '{names[ctx_id]}', expected '{name}'",
                file=sys.stderr,
            )


def main(argv=None):
    parser = OneLineArgumentParser(
        prog="prepare_pascal_context.py", description=__doc__.splitlines()[1]
    )
    parser.add_argument(
        "--root",
        default=os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")),
        help="datasets root (default: $DETECTRON2_DATASETS or ./datasets)",
    )
    parser.add_argument(
        "--voc2010",
        default=None,
        help="VOC2010 directory with JPEGImages/ (default: <root>/VOCdevkit/VOC2010)",
    )
    parser.add_argument(
        "--context",
        default=None,
        help="directory of the extracted trainval.tar.gz: the <id>.mat files, or a folder "
        "holding trainval/ (default: <voc2010>/trainval)",
    )
    parser.add_argument(
        "--split-dir",
        default=None,
        help="directory with train.txt and val.txt (default: <voc2010>/ImageSets/Main)",
    )
    parser.add_argument(
        "--labels", default=None, help="labels.txt of the release, to cross-check the 59 names"
    )
    parser.add_argument(
        "--output", default=None, help="output directory (default: <root>/pascal_context)"
    )
    parser.add_argument("--image-mode", choices=("hardlink", "symlink", "copy"), default="hardlink")
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8))
    args = parser.parse_args(argv)
    args.voc2010 = args.voc2010 or os.path.join(args.root, "VOCdevkit", "VOC2010")
    args.output = args.output or os.path.join(args.root, "pascal_context")

    jpeg_dir = os.path.join(args.voc2010, "JPEGImages")
    if not os.path.isdir(jpeg_dir):
        parser.fail(
            f"VOC2010 images not found: {jpeg_dir} "
            "(extract VOCtrainval_03-May-2010.tar; see datasets/README.md)"
        )
    context = args.context or os.path.join(args.voc2010, "trainval")
    if os.path.isdir(os.path.join(context, "trainval")):
        context = os.path.join(context, "trainval")
    if not os.path.isdir(context):
        parser.fail(
            f"PASCAL Context annotations not found: {context} "
            "(extract trainval.tar.gz; see datasets/README.md)"
        )
    split_dir = args.split_dir or os.path.join(args.voc2010, "ImageSets", "Main")
    splits = {}
    for split in ("train", "val"):
        path = os.path.join(split_dir, f"{split}.txt")
        if not os.path.isfile(path):
            parser.fail(f"split list not found: {path}")
        with open(path) as f:
            splits[split] = [line.split()[0] for line in f if line.strip()]
    labels = args.labels or next(
        (
            p
            for p in (
                os.path.join(context, "labels.txt"),
                os.path.join(os.path.dirname(context), "labels.txt"),
            )
            if os.path.isfile(p)
        ),
        None,
    )
    if args.labels and not os.path.isfile(args.labels):
        parser.fail(f"labels file not found: {args.labels}")
    try:
        import scipy.io  # noqa: F401
    except ImportError:
        parser.fail("scipy is needed to read the .mat files (pip install scipy)")
    if labels:
        _check_labels_txt(labels)

    from tqdm import tqdm

    for split, ids in splits.items():
        missing = [i for i in ids if not os.path.isfile(os.path.join(context, i + ".mat"))]
        if missing:
            parser.fail(
                f"{len(missing)} of {len(ids)} {split} images have no .mat in {context}, "
                f"e.g. {missing[0]}.mat"
            )
    try:
        for split, ids in splits.items():
            out = {
                k: os.path.join(args.output, k, split)
                for k in ("images", "annotations_ctx60", "annotations_ctx59")
            }
            for d in out.values():
                os.makedirs(d, exist_ok=True)
            jobs = [
                (
                    os.path.join(context, i + ".mat"),
                    os.path.join(jpeg_dir, i + ".jpg"),
                    os.path.join(out["annotations_ctx60"], i + ".png"),
                    os.path.join(out["annotations_ctx59"], i + ".png"),
                    os.path.join(out["images"], i + ".jpg"),
                    args.image_mode,
                )
                for i in ids
            ]
            with mp.Pool(max(1, args.workers)) as pool:
                for _ in tqdm(
                    pool.imap_unordered(_convert_one, jobs, chunksize=16),
                    total=len(jobs),
                    desc=split,
                    unit="img",
                ):
                    pass
            print(f"{split}: {len(jobs)} images -> {args.output}")
    except (OSError, ValueError, KeyError) as e:
        parser.fail(f"{type(e).__name__}: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
