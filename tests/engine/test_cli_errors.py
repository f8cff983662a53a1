"""Bad input to every CLI: one clear line on stderr and a non-zero exit, never a stack trace.

Cases that fail before any process is launched run in-process (fast); the checkpoint cases,
which fail inside the launched ``main``, run ``train_net.py`` as a subprocess."""

import logging
import os
import runpy
import sys

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from run_helpers import ROOT, SEMANTIC_CFG, SMALL_SEMANTIC_OPTS, error_lines, run

from nrd_rsp.engine import Trainer, setup_cfg


def _logging_state():
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    return [(lg, list(lg.handlers), lg.propagate, lg.level) for lg in loggers]


def _run_cli(capsys, argv, path=None, module=None):
    """Run a CLI in-process as ``__main__``; returns (exit status, stdout, stderr). Logging
    handlers a CLI installs (bound to the captured streams) are removed afterwards."""
    old_argv, old_path, old_logging = sys.argv, list(sys.path), _logging_state()
    sys.argv = [path or module, *argv]
    code = 0
    try:
        if module:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(path, run_name="__main__")
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv, sys.path[:] = old_argv, old_path
        for lg, handlers, propagate, level in old_logging:
            lg.handlers[:], lg.propagate, lg.level = handlers, propagate, level
        for lg in _logging_state():
            if all(lg[0] is not old[0] for old in old_logging):
                lg[0].handlers.clear()
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line_error(code, err, *fragments, status=2):
    # tqdm progress bars (e.g. the toy data being generated first) are not error output
    lines = [line for line in error_lines(err) if "Generating toy dataset" not in line]
    assert code == status, err[-3000:]
    assert len(lines) == 1, err[-3000:]
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


TRAIN_NET = os.path.join(ROOT, "train_net.py")


def _train_net(capsys, *argv):
    return _run_cli(capsys, list(argv), path=TRAIN_NET)


def test_train_net_without_config(capsys):
    _assert_one_line_error(*_train_net(capsys)[::2], "No config file given", "--config-file")


def test_train_net_missing_config_file(capsys):
    _assert_one_line_error(
        *_train_net(capsys, "--config-file", "configs/nope.yaml")[::2],
        "Config file not found",
        "configs/nope.yaml",
    )


def test_train_net_unknown_key_in_file(capsys, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        f'_BASE_: "{os.path.join(ROOT, SEMANTIC_CFG)}"\n'
        "MODEL:\n  SEM_SEG_HEAD:\n    NUM_CLASES: 8\n"
    )
    _assert_one_line_error(
        *_train_net(capsys, "--config-file", str(cfg))[::2],
        "Unknown config key",
        "NUM_CLASES",
        str(cfg),
    )


def test_train_net_unknown_key_as_override(capsys):
    _assert_one_line_error(
        *_train_net(capsys, "--config-file", SEMANTIC_CFG, "SOLVER.BASE_LRR", "0.1")[::2],
        "Bad config override",
        "SOLVER.BASE_LRR",
    )


def test_train_net_odd_number_of_overrides(capsys):
    _assert_one_line_error(
        *_train_net(capsys, "--config-file", SEMANTIC_CFG, "SOLVER.BASE_LR")[::2], "KEY VALUE pairs"
    )


def test_train_net_bad_flag_value(capsys):
    code, _, err = _train_net(capsys, "--config-file", SEMANTIC_CFG, "--num-gpus", "two")
    _assert_one_line_error(code, err, "--num-gpus", "invalid int value: 'two'")


def test_train_net_missing_weights(capsys):
    _assert_one_line_error(
        *_train_net(capsys, "--config-file", SEMANTIC_CFG, "MODEL.WEIGHTS", "/no/such/w.pth")[::2],
        "MODEL.WEIGHTS file not found",
        "/no/such/w.pth",
    )


def test_train_net_weights_url_unreachable(capsys, tmp_path, monkeypatch):
    # Nothing listens on port 9 of the loopback: the fetch fails at once, as without network.
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    url = "http://127.0.0.1:9/ImageNetPretrained/MSRA/R-50.pkl"
    line = _assert_one_line_error(
        *_train_net(capsys, "--config-file", SEMANTIC_CFG, "MODEL.WEIGHTS", url)[::2],
        f"Cannot fetch MODEL.WEIGHTS '{url}'",
        "tools/convert-torchvision-to-d2.py",
        "MODEL.WEIGHTS /path/to/file.pkl",
        '(GETTING_STARTED.md, "ImageNet weights")',
    )
    assert "URLError" in line


def test_train_net_missing_weights_advice_fits_frozen_bn(capsys):
    # A FrozenBN backbone cannot start from random weights: the advice must not suggest it.
    line = _assert_one_line_error(
        *_train_net(
            capsys,
            "--config-file",
            SEMANTIC_CFG,
            "MODEL.RESNETS.NORM",
            "FrozenBN",
            "MODEL.WEIGHTS",
            "/no/such/w.pth",
        )[::2],
        "MODEL.WEIGHTS file not found",
        "FrozenBN backbone needs pretrained weights",
    )
    assert 'MODEL.WEIGHTS ""' not in line


def test_train_net_missing_v1c_weights_names_the_converter(capsys):
    cfg = os.path.join(ROOT, "configs/Cityscapes-SemanticSegmentation/nrd_R_50_84k_bs16.yaml")
    _assert_one_line_error(
        *_train_net(capsys, "--config-file", cfg, "MODEL.WEIGHTS", "/no/such/resnet50_v1c.pkl")[
            ::2
        ],
        "MODEL.WEIGHTS file not found",
        "tools/convert-mmcls-v1c-to-d2.py IN.pth /no/such/resnet50_v1c.pkl",
    )


@pytest.mark.parametrize(
    "cfg,key,value",
    [
        ("configs/Toy/nrd_R_18_toy.yaml", "MODEL.NRD.PATCH_SIZE", "7"),
        ("configs/Toy/rsp_R_18_toy.yaml", "MODEL.RSP.WINDOW_SIZE", "4"),
        ("configs/Toy/rsp_R_18_toy.yaml", "MODEL.RSP.NUM_HEADS", "3"),
    ],
)
def test_train_net_value_rejected_while_building_the_model(capsys, tmp_path, cfg, key, value):
    _assert_one_line_error(
        *_train_net(
            capsys,
            "--config-file",
            cfg,
            *SMALL_SEMANTIC_OPTS,
            "OUTPUT_DIR",
            str(tmp_path),
            key,
            value,
        )[::2],
        "The model cannot be built from this config",
        key,
    )


def test_train_net_class_count_disagrees_with_dataset(capsys):
    _assert_one_line_error(
        *_train_net(
            capsys,
            "--config-file",
            SEMANTIC_CFG,
            *SMALL_SEMANTIC_OPTS,
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
            "5",
        )[::2],
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES is 5",
        "has 8 classes",
    )


def test_train_net_missing_dataset_root(capsys):
    # Cityscapes is not in the test dataset root.
    cfg = os.path.join(
        ROOT, "configs/Cityscapes-SemanticSegmentation/semantic_fpn_R_50_90k_bs16.yaml"
    )
    line = _assert_one_line_error(
        *_train_net(capsys, "--config-file", cfg, "MODEL.WEIGHTS", "")[::2],
        "Dataset 'cityscapes_fine_sem_seg_val' is not available",
        "datasets/README.md",
    )
    assert os.environ["DETECTRON2_DATASETS"] in line


def test_train_net_missing_split(capsys, tmp_path):
    # A dataset whose images exist but whose label directory (one split's) does not.
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "images" / "train" / "a.jpg").write_bytes(b"")
    name = "reliability_test_missing_split"
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(
        image_root=str(tmp_path / "images" / "train"),
        evaluator_type="sem_seg",
        sem_seg_root=str(tmp_path / "labels" / "train"),
        stuff_classes=list("abcdefgh"),
    )
    try:
        _assert_one_line_error(
            *_train_net(
                capsys,
                "--config-file",
                SEMANTIC_CFG,
                *SMALL_SEMANTIC_OPTS,
                "DATASETS.TRAIN",
                f"('{name}',)",
            )[::2],
            f"Dataset '{name}' is not available",
            "missing directory",
            str(tmp_path / "labels" / "train"),
        )
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_train_net_unwritable_output_dir(capsys, tmp_path):
    (tmp_path / "a_file").write_text("")
    out = tmp_path / "a_file" / "output"
    _assert_one_line_error(
        *_train_net(capsys, "--config-file", SEMANTIC_CFG, "OUTPUT_DIR", str(out))[::2],
        f"OUTPUT_DIR '{out}' is not writable",
        "Pass OUTPUT_DIR",
    )


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A Semantic FPN checkpoint with 6 instead of 8 classes, and one of an unrelated model."""
    d = tmp_path_factory.mktemp("ckpts")
    cfg = setup_cfg(
        os.path.join(ROOT, SEMANTIC_CFG),
        ["MODEL.DEVICE", "cpu", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "6"],
    )
    torch.save({"model": Trainer.build_model(cfg).state_dict()}, d / "six_classes.pth")
    torch.save(
        {"model": {"encoder.weight": torch.zeros(4, 4), "decoder.bias": torch.zeros(4)}},
        d / "alien.pth",
    )
    return d


@pytest.mark.slow
def test_eval_only_with_checkpoint_of_another_architecture(tmp_path, checkpoints):
    r = run(
        [
            "--config-file",
            SEMANTIC_CFG,
            "--eval-only",
            *SMALL_SEMANTIC_OPTS,
            "OUTPUT_DIR",
            str(tmp_path),
            "MODEL.WEIGHTS",
            str(checkpoints / "six_classes.pth"),
        ]
    )
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    lines = error_lines(r.stderr)
    header = lines.index(next(line for line in lines if line.split()[:2] == ["problem", "key"]))
    rows = lines[header + 2 : -1]
    assert sorted(row.split()[1] for row in rows) == [
        "sem_seg_head.predictor.bias",
        "sem_seg_head.predictor.weight",
    ]
    assert all(row.startswith("shape") for row in rows) and "(6, 128, 1, 1)" in " ".join(rows)
    assert lines[-1].startswith("ERROR: Checkpoint") and "six_classes.pth" in lines[-1]
    assert "0 of the model's" in lines[-1] and "2 have another shape" in lines[-1]


@pytest.mark.slow
def test_training_from_weights_of_an_unrelated_model(tmp_path, checkpoints):
    r = run(
        [
            "--config-file",
            SEMANTIC_CFG,
            *SMALL_SEMANTIC_OPTS,
            "OUTPUT_DIR",
            str(tmp_path),
            "MODEL.WEIGHTS",
            str(checkpoints / "alien.pth"),
        ]
    )
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    last = error_lines(r.stderr)[-1]
    assert last.startswith("ERROR: Checkpoint") and "none of its 2 tensors fits the model" in last


# ----------------------------------------------------------------------------------------------
# The other CLIs: a missing config file / missing input.
# ----------------------------------------------------------------------------------------------
OTHER_CLIS = [
    ("tools/analyze_model.py", ["--config-file", "nope.yaml"], "nope.yaml"),
    ("tools/benchmark.py", ["--config-file", "nope.yaml"], "nope.yaml"),
    ("tools/export_model.py", ["--config-file", "nope.yaml", "--format", "onnx"], "nope.yaml"),
    (
        "tools/export_model.py",
        [
            "--config-file",
            SEMANTIC_CFG,
            "--format",
            "onnx",
            "--sample-image",
            "/no/img.png",
            "MODEL.DEVICE",
            "cpu",
        ],
        "/no/img.png",
    ),
    ("tools/publish_model.py", ["/no/such/model_final.pth"], "/no/such/model_final.pth"),
    ("tools/convert-torchvision-to-d2.py", ["/no/such/r50.pth", "out.pkl"], "/no/such/r50.pth"),
    ("demo/demo.py", ["--config-file", "nope.yaml", "--input", "IMAGE"], "nope.yaml"),
    (
        "demo/demo.py",
        ["--config-file", SEMANTIC_CFG, "--input", "/no/such/img.png"],
        "/no/such/img.png",
    ),
    ("datasets/prepare_ade20k_sem_seg.py", ["--root", "/no/such/root"], "/no/such/root"),
    ("datasets/prepare_cityscapes.py", ["--root", "/no/such/root"], "/no/such/root"),
    ("datasets/prepare_panoptic_fpn.py", ["--root", "/no/such/root"], "/no/such/root"),
    ("datasets/prepare_pascal_context.py", ["--root", "/no/such/root"], "/no/such/root"),
]


@pytest.mark.parametrize(
    "script,argv,named", OTHER_CLIS, ids=[f"{s}:{n}" for s, _, n in OTHER_CLIS]
)
def test_other_clis_missing_input(capsys, tmp_path, monkeypatch, script, argv, named):
    monkeypatch.chdir(tmp_path)  # relative outputs (if any) go to tmp
    path = os.path.join(ROOT, script)
    assert os.path.isfile(path), f"{script} is missing"
    (tmp_path / "img.png").write_bytes(b"")
    argv = [
        os.path.join(ROOT, a)
        if a == SEMANTIC_CFG
        else str(tmp_path / "img.png")
        if a == "IMAGE"
        else a
        for a in argv
    ]
    code, _, err = _run_cli(capsys, argv, path=path)
    assert code not in (0, None), err[-3000:]
    lines = error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert named in lines[0]


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["--image-size", "10", "10"], "image_size"),
        (["--num-train", "zero"], "--num-train"),
    ],
)
def test_toy_generator_cli_bad_arguments(capsys, argv, fragment):
    code, _, err = _run_cli(capsys, argv, module="nrd_rsp.data.toy")
    assert code == 2
    lines = error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err and fragment in lines[0], err[-2000:]
