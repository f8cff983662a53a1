"""Small training samples written to disk for the data tests: images in any PIL mode, labels,
the file faults a dataset can have (``DAMAGES``), the toy semantic config and its mappers."""

import os

import cv2
import numpy as np
from conftest import ROOT
from detectron2.config import get_cfg
from PIL import Image

from nrd_rsp import add_nrd_rsp_config
from nrd_rsp.data.mappers import PanopticFPNDatasetMapper, SemanticSegDatasetMapper


def semantic_mapper(fmt="RGB", augs=()):
    return SemanticSegDatasetMapper(
        is_train=True, augmentations=list(augs), image_format=fmt, ignore_label=255
    )


def panoptic_mapper(fmt="RGB", augs=()):
    return PanopticFPNDatasetMapper(
        is_train=True, augmentations=list(augs), image_format=fmt, use_instance_mask=True
    )


MAPPERS = {"semantic": semantic_mapper, "panoptic": panoptic_mapper}

PALETTE = [0, 0, 0, 200, 10, 20, 30, 220, 40, 50, 60, 240] + [0] * (256 * 3 - 12)


def write_label(path, label, mode="L"):
    img = Image.fromarray(label.astype(np.uint8), mode="L")
    if mode == "P":
        img = img.convert("P")
        img.putpalette(PALETTE)  # colours differ from the indices: the indices must be read
    img.save(path)


def write_sample(
    tmp_path, h=24, w=30, image_mode="RGB", label_shape=None, name="a", annotations=()
):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    img_path, lbl_path = str(tmp_path / f"{name}.png"), str(tmp_path / f"{name}_label.png")
    if image_mode == "RGB":
        Image.fromarray(rgb).save(img_path)
    elif image_mode == "L":
        Image.fromarray(rgb[:, :, 0]).save(img_path)
    elif image_mode == "RGBA":
        alpha = rng.integers(0, 255, (h, w, 1), dtype=np.uint8)
        Image.fromarray(np.concatenate([rgb, alpha], 2), mode="RGBA").save(img_path)
    elif image_mode == "P":
        p = Image.fromarray((rgb[:, :, 0] % 4).astype(np.uint8), mode="L").convert("P")
        p.putpalette(PALETTE)
        p.save(img_path)
    lh, lw = label_shape or (h, w)
    label = (np.arange(lh * lw).reshape(lh, lw) % 3).astype(np.uint8)
    write_label(lbl_path, label)
    return {
        "file_name": img_path,
        "sem_seg_file_name": lbl_path,
        "height": h,
        "width": w,
        "image_id": name,
        "annotations": list(annotations),
    }


def expected_rgb(path):
    with Image.open(path) as im:
        if im.mode == "L":
            a = np.asarray(im)
            return np.stack([a, a, a], 2)
        if im.mode == "RGBA":
            return np.asarray(im)[:, :, :3]  # alpha is dropped
        if im.mode == "P":
            return np.asarray(PALETTE, np.uint8).reshape(256, 3)[np.asarray(im)]
        return np.asarray(im)


def damage(tmp_path, d, how):
    if how == "missing image":
        os.remove(d["file_name"])
    elif how == "garbage image":
        with open(d["file_name"], "wb") as f:
            f.write(os.urandom(500))
    elif how == "truncated jpeg":
        path = d["file_name"][:-4] + ".jpg"
        cv2.imwrite(path, np.random.default_rng(1).integers(0, 255, (24, 30, 3), dtype=np.uint8))
        data = open(path, "rb").read()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
        d["file_name"] = path
    elif how == "label of another size":
        write_label(d["sem_seg_file_name"], np.zeros((d["height"] + 1, d["width"]), np.uint8))
    elif how == "image of another size than the dataset says":
        d["height"] += 1
    elif how == "colour label":
        Image.fromarray(
            np.random.default_rng(2).integers(0, 255, (24, 30, 3), dtype=np.uint8)
        ).save(d["sem_seg_file_name"])
    elif how == "corrupt label":
        with open(d["sem_seg_file_name"], "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n" + os.urandom(40))
    return d["sem_seg_file_name"] if "label" in how else d["file_name"]


DAMAGES = [
    "missing image",
    "garbage image",
    "truncated jpeg",
    "label of another size",
    "image of another size than the dataset says",
    "colour label",
    "corrupt label",
]


def toy_cfg(**opts):
    cfg = get_cfg()
    add_nrd_rsp_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs/Toy/Base-Toy-SemSeg.yaml"))
    cfg.merge_from_list(["SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "SEED", "3"])
    for k, v in opts.items():
        cfg.merge_from_list([k, v])
    return cfg


def write_dataset(tmp_path, n=10, bad=(3, 7)):
    dicts = [write_sample(tmp_path, name=f"s{i}") for i in range(n)]
    bad_files = [
        damage(tmp_path, dicts[i], "garbage image" if j % 2 == 0 else "label of another size")
        for j, i in enumerate(bad)
    ]
    return dicts, bad_files


def train_mapper(cfg):
    # Random resize + crop + flip + colour jitter: every RNG draw must come from the sample seed.
    return SemanticSegDatasetMapper(cfg, True)
