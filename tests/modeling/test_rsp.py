"""RSP head (docs/RSP.md): RSE against a per-pixel reference, shapes, training, checkpoints."""

import functools
import math

import pytest
import torch
import yaml
from conftest import panoptic_batch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY, build_model
from detectron2.utils.events import EventStorage

from nrd_rsp import add_nrd_rsp_config
from nrd_rsp.config import RENAMED_KEYS
from nrd_rsp.modeling.rsp import RSE, RSP, RSPHead, RSPSemSegHead
from nrd_rsp.modeling.rsp_panoptic_fpn import RSPPanopticFPN

SEM_CFG = "configs/Toy/rsp_R_18_toy.yaml"
PAN_CFG = "configs/Toy/rsp_panoptic_fpn_R_18_toy.yaml"
PAN_BASE_CFG = "configs/Toy/Base-Toy-Panoptic-FPN.yaml"
SEM_BASE_CFG = "configs/Toy/Base-Toy-SemSeg.yaml"


@pytest.fixture(autouse=True)
def _hermetic(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    torch.manual_seed(0)


def load_cfg(path, *opts):
    cfg = get_cfg()
    add_nrd_rsp_config(cfg)
    cfg.merge_from_file(path)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *opts])
    return cfg


# --------------------------------------------------------------------------------------------
# RSE against an explicit per-pixel reference


def naive_rse(rse, fine, coarse):
    """Loops over pixels and window positions; masks window positions outside the coarse map."""
    q = torch.nn.functional.conv2d(fine, rse.query.weight)
    k = torch.nn.functional.conv2d(coarse, rse.key.weight)
    v = torch.nn.functional.conv2d(coarse, rse.value.weight)
    n, _, height, width = fine.shape
    hc, wc = coarse.shape[-2:]
    g, d, ks = rse.num_heads, rse.head_dim, rse.window_size
    r = ks // 2
    out = torch.zeros(n, g * d, height, width, dtype=fine.dtype)
    weights = torch.zeros(n, g, height, width, ks * ks, dtype=fine.dtype)
    for b in range(n):
        for h in range(g):
            ch = slice(h * d, (h + 1) * d)
            for py in range(height):
                for px in range(width):
                    cy, cx = py // 2, px // 2
                    logits, vals, idx = [], [], []
                    for i in range(ks):
                        for j in range(ks):
                            ry, rx = cy + i - r, cx + j - r
                            if not (0 <= ry < hc and 0 <= rx < wc):
                                continue
                            logit = torch.dot(q[b, ch, py, px], k[b, ch, ry, rx]) / math.sqrt(d)
                            logit = logit + rse.rel_pos_bias[h, 2 * (py % 2) + px % 2, i * ks + j]
                            logits.append(logit)
                            vals.append(v[b, ch, ry, rx])
                            idx.append(i * ks + j)
                    w = torch.softmax(torch.stack(logits), dim=0)
                    out[b, ch, py, px] = (w[:, None] * torch.stack(vals)).sum(0)
                    weights[b, h, py, px, idx] = w
    return out, weights


@pytest.mark.parametrize(
    "fine_hw, coarse_hw, heads, window",
    [
        ((6, 8), (3, 4), 2, 3),  # exactly 2x
        ((5, 7), (3, 4), 2, 3),  # odd fine sizes (FPN: coarse = ceil(fine / 2))
        ((9, 4), (5, 2), 1, 5),  # window larger than the coarse map
        ((4, 3), (4, 3), 4, 3),  # coarse more than half the fine size
    ],
)
def test_rse_matches_naive_reference(fine_hw, coarse_hw, heads, window):
    torch.manual_seed(1)
    rse = RSE(6, 5, channels=8, num_heads=heads, window_size=window).double()
    with torch.no_grad():
        rse.rel_pos_bias.normal_(0, 1.0)  # make the bias indexing matter
    fine = torch.randn(2, 6, *fine_hw, dtype=torch.float64)
    coarse = torch.randn(2, 5, *coarse_hw, dtype=torch.float64)

    out, weights = rse(fine, coarse, return_weights=True)
    ref_out, ref_weights = naive_rse(rse, fine, coarse)

    assert out.shape == (2, 8, *fine_hw)
    assert weights.shape == (2, heads, *fine_hw, window * window)
    torch.testing.assert_close(weights, ref_weights, atol=1e-5, rtol=0)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)))
    # Output without weights is the same tensor; float32 agrees too.
    torch.testing.assert_close(rse(fine, coarse), out)
    out32 = rse.float()(fine.float(), coarse.float())
    torch.testing.assert_close(out32, ref_out.float(), atol=1e-5, rtol=1e-4)


def test_rse_border_weights_are_zero_outside_the_coarse_map():
    rse = RSE(4, 4, channels=4, num_heads=1, window_size=3)
    _, w = rse(torch.randn(1, 4, 4, 4), torch.randn(1, 4, 2, 2), return_weights=True)
    # Fine pixel (0, 0) -> coarse (0, 0): window offsets with i == 0 or j == 0 leave the map.
    outside = [0, 1, 2, 3, 6]
    assert torch.all(w[0, 0, 0, 0, outside] == 0)
    assert torch.all(w[0, 0, 0, 0, [4, 5, 7, 8]] > 0)


def test_rse_rejects_too_small_coarse_map():
    rse = RSE(4, 4, channels=4, num_heads=2)
    with pytest.raises(ValueError, match="more than twice"):
        rse(torch.randn(1, 4, 7, 4), torch.randn(1, 4, 3, 2))
    with pytest.raises(ValueError, match="divisible"):
        RSE(4, 4, channels=6, num_heads=4)
    with pytest.raises(ValueError, match="odd"):
        RSE(4, 4, channels=4, num_heads=2, window_size=2)


# --------------------------------------------------------------------------------------------
# RSPHead: top-down propagation


def _pyramid(channels=32, size=(16, 20), n=1):
    shapes = {f"p{k}": ShapeSpec(channels=channels, stride=2**k) for k in range(2, 7)}
    h, w = size
    feats = {}
    for k in range(2, 7):
        feats[f"p{k}"] = torch.randn(n, channels, h, w)
        h, w = (h + 1) // 2, (w + 1) // 2
    return shapes, feats


def test_rsp_head_propagates_context_top_down():
    shapes, feats = _pyramid()
    head = RSPHead(shapes, in_features=["p2", "p3", "p4", "p5"], channels=8, num_heads=2, norm="GN")
    head.eval()
    out = head(feats)
    assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in feats.items()}
    assert head.output_shape() == shapes
    assert out["p5"] is feats["p5"] and out["p6"] is feats["p6"]  # P5' = P5, P6 = MaxPool(P5')
    for level in ("p2", "p3", "p4"):
        assert not torch.allclose(out[level], feats[level])

    # Changing P5 changes every refined level down to P2 (context flows to stride 4) ...
    feats5 = dict(feats, p5=torch.randn_like(feats["p5"]))
    out5 = head(feats5)
    for level in ("p2", "p3", "p4"):
        assert (out5[level] - out[level]).abs().max() > 1e-4, level
    # ... while changing P2 leaves the coarser levels untouched.
    out2 = head(dict(feats, p2=torch.randn_like(feats["p2"])))
    for level in ("p3", "p4", "p5"):
        torch.testing.assert_close(out2[level], out[level])


def test_rsp_identity_skip_adds_the_fine_map():
    """Eq. 4: F_out = F + ReLU(Norm(Conv(F + W_o c))); IDENTITY_SKIP False drops the ``F +``."""
    torch.manual_seed(0)
    fine, coarse = torch.randn(2, 32, 10, 12), torch.randn(2, 24, 5, 6)
    skip = RSP(32, 24, channels=8, num_heads=2, norm="GN", identity_skip=True).eval()
    plain = RSP(32, 24, channels=8, num_heads=2, norm="GN", identity_skip=False).eval()
    plain.load_state_dict(skip.state_dict())
    out_plain = plain(fine, coarse)
    assert out_plain.min() >= 0 and out_plain.shape == fine.shape  # ends in ReLU
    torch.testing.assert_close(skip(fine, coarse), fine + out_plain)
    cfg = get_cfg()
    add_nrd_rsp_config(cfg)
    assert cfg.MODEL.RSP.IDENTITY_SKIP is True
    cfg.MODEL.RSP.IDENTITY_SKIP = False
    shapes, _ = _pyramid()
    head = RSPHead(cfg, shapes)
    assert all(not stage.identity_skip for stage in head.stages.values())


def test_rsp_head_num_stages_and_errors():
    shapes, feats = _pyramid()
    head = RSPHead(shapes, in_features=["p2", "p3", "p4", "p5"], channels=8, num_stages=2)
    assert head.pairs == [("p4", "p5"), ("p3", "p4")]
    assert head(feats)["p2"] is feats["p2"]  # below the last stage: unchanged
    with pytest.raises(ValueError, match="MODEL.RSP.NUM_STAGES"):
        RSPHead(shapes, in_features=["p2", "p3"], num_stages=2)
    with pytest.raises(ValueError, match="strides doubling"):
        RSPHead(shapes, in_features=["p2", "p4"])


# --------------------------------------------------------------------------------------------
# Models built from the toy configs


def _image(h=200, w=250):
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8).float()


def test_semantic_model_output_size_not_divisible_by_32():
    cfg = load_cfg(SEM_CFG)
    model = build_model(cfg).eval()
    assert isinstance(model.sem_seg_head, RSPSemSegHead)
    assert SEM_SEG_HEADS_REGISTRY.get("RSPSemSegHead") is RSPSemSegHead
    with torch.no_grad():
        out = model([{"image": _image()}, {"image": _image(170, 130), "height": 340, "width": 260}])
    assert out[0]["sem_seg"].shape == (8, 200, 250)
    assert out[1]["sem_seg"].shape == (8, 340, 260)
    assert torch.isfinite(out[0]["sem_seg"]).all()


def test_semantic_fusion_p2_classifies_from_p2_only():
    cfg = load_cfg(SEM_CFG, "MODEL.SEM_SEG_HEAD.RSP_FUSION", "p2")
    model = build_model(cfg).eval()
    assert model.sem_seg_head.in_features == ["p2"]
    assert not hasattr(model.sem_seg_head, "p5")
    with torch.no_grad():
        assert model([{"image": _image()}])[0]["sem_seg"].shape == (8, 200, 250)
    with pytest.raises(ValueError, match="RSP_FUSION"):
        build_model(load_cfg(SEM_CFG, "MODEL.SEM_SEG_HEAD.RSP_FUSION", "concat"))


@pytest.mark.parametrize("old, new", sorted(RENAMED_KEYS.items()))
def test_renamed_keys_fail_with_their_new_name(old, new, tmp_path):
    """MODEL.RSP.SEM_SEG_FUSION, MODEL.RSP.INSTANCE_FEATURES (read by a head and a
    meta-architecture, now in their nodes) and MODEL.NRD.GUIDANCE_PROJ_CHANNELS were renamed."""
    cfg = get_cfg()
    add_nrd_rsp_config(cfg)
    value = functools.reduce(lambda node, part: node[part], new.split("."), cfg)
    with pytest.raises(KeyError, match=f"{old} was renamed to {new}"):
        cfg.clone().merge_from_list([old, str(value)])
    nested = value
    for part in reversed(old.split(".")):
        nested = {part: nested}
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(nested))
    with pytest.raises(KeyError, match=f"{old} was renamed to {new}"):
        cfg.clone().merge_from_file(str(path))


def _assert_rsp_grads(model, prefix):
    rsp_params = [(n, p) for n, p in model.named_parameters() if n.startswith(prefix)]
    assert len(rsp_params) == 3 * 8  # 3 stages x (q, k, v, bias table, proj, conv, GN w/b)
    for name, p in rsp_params:
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name
        assert torch.isfinite(p.grad).all(), name


def test_semantic_training_step():
    cfg = load_cfg(SEM_CFG)
    model = build_model(cfg).train()
    labels = torch.randint(0, 8, (2, 128, 128))
    labels[:, :10] = 255
    batch = [{"image": _image(128, 128), "sem_seg": labels[i]} for i in range(2)]
    with EventStorage():
        losses = model(batch)
    assert set(losses) == {"loss_sem_seg"}
    loss = sum(losses.values())
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    _assert_rsp_grads(model, "sem_seg_head.rsp.")


@pytest.mark.parametrize("instance_features", ["refined", "fpn"])
def test_panoptic_training_step(instance_features):
    cfg = load_cfg(PAN_CFG, "MODEL.RSP_PANOPTIC_FPN.INSTANCE_FEATURES", instance_features)
    model = build_model(cfg).train()
    assert isinstance(model, RSPPanopticFPN)
    with EventStorage():
        losses = model(panoptic_batch())
    assert set(losses) == {
        "loss_sem_seg",
        "loss_rpn_cls",
        "loss_rpn_loc",
        "loss_cls",
        "loss_box_reg",
        "loss_mask",
    }
    for k, v in losses.items():
        assert torch.isfinite(v), k
    sum(losses.values()).backward()
    _assert_rsp_grads(model, "rsp.")
    # The instance branch trains too (RPN conv and mask head get gradients).
    for name in ("proposal_generator.rpn_head.conv.weight", "roi_heads.mask_head.predictor.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name


def test_panoptic_instance_features_choice():
    images = torch.randn(1, 3, 128, 160)
    for choice in ("refined", "fpn"):
        model = build_model(
            load_cfg(PAN_CFG, "MODEL.RSP_PANOPTIC_FPN.INSTANCE_FEATURES", choice)
        ).eval()
        with torch.no_grad():
            fpn = model.backbone(images)
            sem, inst = model.extract_features(images)
            refined = model.rsp(fpn)
        expected = refined if choice == "refined" else fpn
        assert set(inst) == set(fpn) == {"p2", "p3", "p4", "p5", "p6"}
        for k in fpn:
            torch.testing.assert_close(sem[k], refined[k])
            torch.testing.assert_close(inst[k], expected[k])
        assert not torch.allclose(sem["p2"], fpn["p2"])
    with pytest.raises(ValueError, match="INSTANCE_FEATURES"):
        build_model(load_cfg(PAN_CFG, "MODEL.RSP_PANOPTIC_FPN.INSTANCE_FEATURES", "both"))


def test_panoptic_inference_output_size_and_segments():
    cfg = load_cfg(
        PAN_CFG,
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
        "0.0",
        "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH",
        "0.0",
        "MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT",
        "1",
        "TEST.DETECTIONS_PER_IMAGE",
        "20",
    )
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model([{"image": _image()}, {"image": _image(170, 130), "height": 85, "width": 65}])
    for r, (h, w) in zip(out, [(200, 250), (85, 65)]):
        assert set(r) == {"sem_seg", "instances", "panoptic_seg"}
        assert r["sem_seg"].shape == (6, h, w)
        assert r["instances"].image_size == (h, w)
        assert r["instances"].pred_masks.shape[-2:] == (h, w)
        pan, segments = r["panoptic_seg"]
        assert pan.shape == (h, w)
        ids = set(torch.unique(pan).tolist()) - {0}
        assert ids == {s["id"] for s in segments}
        assert len(segments) == len(ids)
    pan, segments = out[0]["panoptic_seg"]
    assert any(s["isthing"] for s in segments), "expected some instances with thresholds at 0"
    assert any(not s["isthing"] for s in segments)
    for s in segments:
        if not s["isthing"]:  # stuff segments come from the semantic argmax
            region = pan == s["id"]
            assert torch.all(out[0]["sem_seg"].argmax(0)[region] == s["category_id"])
            assert region.sum().item() == s["area"]
    # Raw outputs without postprocessing: (detector results, semantic logits at padded size).
    with torch.no_grad():
        det, sem = model.inference([{"image": _image()}], do_postprocess=False)
    assert sem.shape == (1, 6, 224, 256) and len(det) == 1


# --------------------------------------------------------------------------------------------
# Checkpoint compatibility


def test_panoptic_fpn_checkpoint_loads_into_rsp_panoptic_fpn():
    base = build_model(load_cfg(PAN_BASE_CFG))
    state = base.state_dict()
    model = build_model(load_cfg(PAN_CFG))
    result = model.load_state_dict(state, strict=False)
    # Only the semantic head may differ (the toy RSP config classifies from P2' alone, so
    # PanopticFPN's p3-p5 scale heads have no counterpart).
    assert all(k.startswith("sem_seg_head.") for k in result.unexpected_keys)
    assert result.missing_keys, "rsp.* must be missing"
    assert all(k.startswith(("rsp.", "sem_seg_head.")) for k in result.missing_keys)
    assert any(k.startswith("rsp.") for k in result.missing_keys)
    own = model.state_dict()
    for prefix in ("backbone.", "proposal_generator.", "roi_heads."):
        names = [k for k in state if k.startswith(prefix)]
        assert names and all(k in own for k in names), prefix
        assert {k for k in own if k.startswith(prefix)} == set(names), prefix
    for k in ("backbone.bottom_up.stem.conv1.weight", "roi_heads.box_predictor.cls_score.weight"):
        torch.testing.assert_close(own[k], state[k])


def test_semantic_fpn_checkpoint_loads_into_rsp_semantic_model():
    state = build_model(load_cfg(SEM_BASE_CFG)).state_dict()
    result = build_model(load_cfg(SEM_CFG)).load_state_dict(state, strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(
        k.startswith("sem_seg_head.rsp.") for k in result.missing_keys
    )


def test_rsp_panoptic_fpn_starts_from_panoptic_fpn_weights_and_rng():
    """With the same seed, RSPPanopticFPN's non-RSP modules get exactly PanopticFPN's initial
    weights and the RNG continues identically (the RSP head is built on a forked RNG), so the
    two models differ by the RSP head only. (The toy RSP config also changes the semantic
    head, to P2' alone; with Panoptic FPN's 4-level semantic head everything else is equal.)"""
    states, draws = [], []
    sum_head = ["MODEL.SEM_SEG_HEAD.IN_FEATURES", ["p2", "p3", "p4", "p5"]]
    for path, opts in ((PAN_BASE_CFG, []), (PAN_CFG, sum_head)):
        torch.manual_seed(123)
        model = build_model(load_cfg(path, *opts))
        states.append({k: v for k, v in model.state_dict().items() if not k.startswith("rsp.")})
        draws.append(torch.rand(4))
    assert set(states[0]) == set(states[1])
    for k, v in states[0].items():
        assert torch.equal(v, states[1][k]), k
    assert torch.equal(draws[0], draws[1])
