"""The toy generator's command line, ``python -m nrd_rsp.data.toy``, e.g.::

    python -m nrd_rsp.data.toy --num-train 200 --num-val 40 --image-size 128 160 --seed 0
    python -m nrd_rsp.data.toy --output /tmp/toy --num-train 8 --num-val 4

Without ``--output`` the data goes where training looks for it, ``$DETECTRON2_DATASETS/toy/<tag>``.
The flags default to the fields of :class:`~nrd_rsp.data.toy.spec.ToyParams`.
"""

import contextlib
import os
from typing import Optional, Sequence

from ...errors import OneLineArgumentParser
from .spec import ToyParams
from .write import ensure_toy_dataset, generate_toy_dataset_once, is_toy_dataset_complete

__all__ = ["main"]


def _parser() -> OneLineArgumentParser:
    defaults = ToyParams()
    parser = OneLineArgumentParser(
        prog="python -m nrd_rsp.data.toy",
        description="Generate the nrd_rsp toy dataset (COCO panoptic + Panoptic FPN + semantic "
        "formats). Without --output it goes where training looks for it: "
        "$DETECTRON2_DATASETS/toy/<tag>.",
    )
    parser.add_argument("--output", help="dataset directory to write (must not exist or be empty)")
    parser.add_argument("--num-train", type=int, default=defaults.num_train)
    parser.add_argument("--num-val", type=int, default=defaults.num_val)
    parser.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=list(defaults.image_size),
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--max-pole-width",
        type=int,
        choices=(1, 2, 3),
        default=defaults.max_pole_width,
        help="poles are 1..N px wide; 1 makes every thin structure 1 px wide",
    )
    parser.add_argument(
        "--context-stuff",
        action="store_true",
        help="paint road like wall, so that only the surroundings tell them apart",
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        params = ToyParams(
            args.num_train,
            args.num_val,
            tuple(args.image_size),
            args.seed,
            max_pole_width=args.max_pole_width,
            context_stuff=args.context_stuff,
        )
    except ValueError as e:
        parser.error(str(e))
    if args.output is None:
        print(ensure_toy_dataset(params))
        return 0
    out = os.path.abspath(args.output)
    if is_toy_dataset_complete(out, params):
        print(f"{out} already holds this toy dataset")
        return 0
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        parser.error(f"--output {out} exists and is not an empty directory")
    try:
        if os.path.isdir(out):
            os.rmdir(out)
        generate_toy_dataset_once(out, params)
    except OSError as e:
        parser.error(f"cannot write {out}: {e}")
    finally:
        with contextlib.suppress(OSError):
            os.remove(out + ".lock")
    print(out)
    return 0
