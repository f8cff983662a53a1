"""Training mappers: augmentation output shapes, label/image alignment, padding, errors."""
import cv2
import numpy as np
import pytest
import torch

from detectron2.config import get_cfg

from nrd_rsp import add_nrd_rsp_config
from nrd_rsp.data import PanopticFPNDatasetMapper, SemanticSegDatasetMapper, build_train_mapper


def _cfg(**overrides):
    cfg = get_cfg()
    add_nrd_rsp_config(cfg)
    cfg.merge_from_file("configs/Toy/Base-Toy-SemSeg.yaml")
    for k, v in overrides.items():
        cfg.merge_from_list([k, v])
    return cfg


def _write_sample(tmp_path, h=100, w=150, label_shape=None):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    # Label = a function of the pixel column so alignment survives every geometric augmentation.
    label = np.tile((np.arange(w) * 8 // w).astype(np.uint8), (h, 1))
    # Encode the same column class into the red channel: after augmentation they must still agree.
    img[:, :, 2] = label * 30
    if label_shape is not None:
        label = cv2.resize(label, label_shape[::-1], interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(tmp_path / "img.png"), img)  # BGR on disk; red = channel 2
    cv2.imwrite(str(tmp_path / "lbl.png"), label)
    return {"file_name": str(tmp_path / "img.png"), "sem_seg_file_name": str(tmp_path / "lbl.png"),
            "height": h, "width": w}


def test_semantic_mapper_shapes_alignment_and_padding(tmp_path):
    cfg = _cfg(**{"INPUT.COLOR_AUG": "False"})
    mapper = SemanticSegDatasetMapper(cfg, True)
    d = _write_sample(tmp_path)
    for _ in range(10):
        out = mapper(d)
        img, seg = out["image"], out["sem_seg"]
        assert img.dtype == torch.uint8 and seg.dtype == torch.int64
        assert img.shape[0] == 3 and img.shape[1:] == seg.shape
        assert seg.shape[0] % 128 == 0 and seg.shape[1] % 128 == 0  # INPUT.SIZE_DIVISIBILITY
        valid = seg != 255
        assert valid.any()
        assert set(seg[valid].unique().tolist()) <= set(range(8))
        # cfg.INPUT.FORMAT is RGB -> red is channel 0; nearest-resized label agrees with the image
        # almost everywhere (bilinear image resize blurs class borders only).
        red = img[0][valid].float()
        agree = (red - seg[valid].float() * 30).abs() <= 16
        assert agree.float().mean() > 0.9
        # padding: ignore label and zero image
        assert (img[:, ~valid] == 0).all()


def test_semantic_mapper_crop_and_scale_range(tmp_path):
    cfg = _cfg(**{"INPUT.SIZE_DIVISIBILITY": "-1", "INPUT.CROP.SIZE": "(64, 96)"})
    mapper = SemanticSegDatasetMapper(cfg, True)
    d = _write_sample(tmp_path, h=128, w=160)
    for _ in range(10):
        out = mapper(d)
        h, w = out["sem_seg"].shape
        assert h <= 64 and w <= 96


def test_semantic_mapper_rejects_label_of_other_size(tmp_path):
    mapper = SemanticSegDatasetMapper(_cfg(), True)
    d = _write_sample(tmp_path, label_shape=(50, 75))
    with pytest.raises(ValueError, match="lbl.png|img.png"):
        mapper(d)


def test_build_train_mapper_by_name():
    assert isinstance(build_train_mapper(_cfg()), SemanticSegDatasetMapper)
    cfg = get_cfg()
    add_nrd_rsp_config(cfg)
    cfg.merge_from_file("configs/Toy/Base-Toy-Panoptic-FPN.yaml")
    assert isinstance(build_train_mapper(cfg), PanopticFPNDatasetMapper)
    cfg.INPUT.DATASET_MAPPER_NAME = "nope"
    with pytest.raises(ValueError, match="nope"):
        build_train_mapper(cfg)


def test_panoptic_fpn_mapper_gives_instances_and_stuff_map(tmp_path):
    cfg = get_cfg()
    add_nrd_rsp_config(cfg)
    cfg.merge_from_file("configs/Toy/Base-Toy-Panoptic-FPN.yaml")
    mapper = PanopticFPNDatasetMapper(cfg, True)
    h, w = 96, 120
    img = np.full((h, w, 3), 90, np.uint8)
    stuff = np.full((h, w), 2, np.uint8)
    stuff[20:50, 30:70] = 0  # thing pixels
    cv2.imwrite(str(tmp_path / "i.png"), img)
    cv2.imwrite(str(tmp_path / "s.png"), stuff)
    poly = [[30.0, 20.0, 70.0, 20.0, 70.0, 50.0, 30.0, 50.0]]
    d = {"file_name": str(tmp_path / "i.png"), "sem_seg_file_name": str(tmp_path / "s.png"), "height": h,
         "width": w, "image_id": 0,
         "annotations": [{"bbox": [30, 20, 40, 30], "bbox_mode": 1, "category_id": 1, "segmentation": poly,
                          "iscrowd": 0}]}
    out = mapper(d)
    inst = out["instances"]
    assert len(inst) == 1 and inst.gt_classes.tolist() == [1]
    assert inst.gt_masks.polygons or inst.gt_masks.tensor.numel()
    assert out["image"].shape[1:] == out["sem_seg"].shape
    assert set(out["sem_seg"].unique().tolist()) <= {0, 2}
