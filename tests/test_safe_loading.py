"""Safe by default (docs/RELIABILITY.md, "Security"): no code runs from a shared weights file or
config.

Every path that reads weights (training initialisation, ``--resume``, ``--eval-only``, demo,
export, the analysis tools, ``model_zoo.get``, the converters) is given a pickle whose payload
would create a file, and every command line that reads a config a YAML config whose Python tag
would: the file is never created, the exit status is 2 and the output has exactly one ``ERROR:``
line and no traceback. Also: good ``.pkl`` weights still load, a download whose sha256 differs
from its name or model-zoo entry is caught and removed from the cache, ``--allow-unsafe-config``
lets a trusted config through, and a model entry Detectron2 cannot load is one line.

The ``train_net.py`` weight cases fail inside the launched ``main`` and run as subprocesses; the
others fail before any model runs and run in-process.
"""

import builtins
import hashlib
import logging
import os
import pickle
import runpy
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from run_helpers import ROOT, SEMANTIC_CFG, SMALL_SEMANTIC_OPTS, run

from nrd_rsp import model_zoo, safe_loading
from nrd_rsp.checkpoint import load_weights
from nrd_rsp.converters import write_d2_weights
from nrd_rsp.engine import Trainer, setup_cfg
from nrd_rsp.errors import (
    UnsafeCheckpointError,
    UnsafeConfigError,
    WeightsHashMismatchError,
    exit_code,
    one_line,
)

TOY_NAME = "Toy/semantic_fpn_R_18_toy"
SEMANTIC = os.path.join(ROOT, SEMANTIC_CFG)  # in-process runs change directory
CPU = ["MODEL.DEVICE", "cpu"]


class _CreatesFile:
    """Unpickling it calls ``open(path, "w")``: the file exists iff the payload ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


def _evil_pkl(path, marker):
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": _CreatesFile(marker)}, "__author__": "someone"}, f)
    return str(path)


def _evil_pth(path, marker):
    torch.save({"model": {"w": _CreatesFile(marker)}}, path)
    return str(path)


def _evil_yaml(path, marker, base=SEMANTIC):
    path.write_text(
        f'_BASE_: {base}\nOUTPUT_DIR: !!python/object/apply:builtins.open ["{marker}", "w"]\n'
    )
    return str(path)


def _assert_refused(code, output, marker, *fragments):
    """Not run (no ``marker``), exit 2, one ``ERROR:`` line holding ``fragments``, no traceback."""
    assert not os.path.exists(marker), "the payload ran"
    errors = [line for line in output.splitlines() if line.startswith("ERROR:")]
    assert code == 2, output[-3000:]
    assert len(errors) == 1 and "Traceback" not in output, output[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def _run_cli(capsys, script, argv):
    """``python SCRIPT ARGV`` in-process; returns (exit status, stdout + stderr). Logging handlers
    the script adds (bound to the captured streams) are removed afterwards."""
    old_argv, old_path = sys.argv, list(sys.path)
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    old_handlers = {lg: list(lg.handlers) for lg in loggers}
    sys.argv, code = [script, *argv], 0
    try:
        runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv, sys.path[:] = old_argv, old_path
        for lg in [logging.getLogger()] + list(logging.Logger.manager.loggerDict.values()):
            if isinstance(lg, logging.Logger):
                lg.handlers[:] = old_handlers.get(lg, [])
    out, err = capsys.readouterr()
    return code, out + err


def test_the_payload_runs_with_plain_pickle(tmp_path):
    """The payload used below is real: plain ``pickle.load`` (Detectron2's) creates the file."""
    marker = tmp_path / "pwned"
    with open(_evil_pkl(tmp_path / "evil.pkl", marker), "rb") as f:
        pickle.load(f, encoding="latin1")
    assert marker.exists()


# ----------------------------------------------------------------------------------------------
# Weights: every path that reads them
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("how", ["train", "eval-only", "resume-pkl", "resume-pth"])
def test_train_net_refuses_weights_that_run_code(tmp_path, how):
    marker, out = tmp_path / "pwned", tmp_path / "out"
    out.mkdir()
    flags, opts = [], []
    if how in ("train", "eval-only"):
        evil = _evil_pkl(tmp_path / "evil.pkl", marker)
        flags, opts = (["--eval-only"] if how == "eval-only" else []), ["MODEL.WEIGHTS", evil]
    else:  # last_checkpoint names the file: --resume loads it
        name = "model_final.pkl" if how == "resume-pkl" else "model_0000009.pth"
        evil = (_evil_pkl if how == "resume-pkl" else _evil_pth)(out / name, marker)
        (out / "last_checkpoint").write_text(name)
        flags = ["--resume"]
    args = [*flags, "--config-file", SEMANTIC_CFG, *SMALL_SEMANTIC_OPTS, "OUTPUT_DIR", str(out)]
    r = run(args + opts)
    _assert_refused(r.returncode, r.stdout + r.stderr, marker, "Refusing to load", "io.open", evil)


def _demo_argv(tmp_path, weights):
    image = tmp_path / "img.png"
    cv2.imwrite(str(image), np.zeros((64, 80, 3), np.uint8))
    return [
        "--config-file",
        SEMANTIC,
        "--input",
        str(image),
        "--output",
        str(tmp_path / "vis"),
        "MODEL.WEIGHTS",
        weights,
        *CPU,
    ]


WEIGHT_CLIS = {
    "demo": ("demo/demo.py", _evil_pkl, _demo_argv),
    "export": (
        "tools/export_model.py",
        _evil_pkl,
        lambda tmp, w: [
            "--config-file",
            SEMANTIC,
            "--format",
            "torchscript",
            "--output",
            str(tmp / "export"),
            "MODEL.WEIGHTS",
            w,
            *CPU,
        ],
    ),
    "analyze_model": (
        "tools/analyze_model.py",
        _evil_pkl,
        lambda tmp, w: ["--config-file", SEMANTIC, "MODEL.WEIGHTS", w, *CPU],
    ),
    "convert-torchvision (.pth)": (
        "tools/convert-torchvision-to-d2.py",
        _evil_pth,
        lambda tmp, w: [w, str(tmp / "out.pkl")],
    ),
    "convert-torchvision (.pkl)": (
        "tools/convert-torchvision-to-d2.py",
        _evil_pkl,
        lambda tmp, w: [w, str(tmp / "out.pkl")],
    ),
    "convert-mmcls-v1c": (
        "tools/convert-mmcls-v1c-to-d2.py",
        _evil_pth,
        lambda tmp, w: [w, str(tmp / "out.pkl")],
    ),
    "publish_model": (
        "tools/publish_model.py",
        _evil_pth,
        lambda tmp, w: [w, "--output-dir", str(tmp / "pub")],
    ),
}


@pytest.mark.parametrize("name", list(WEIGHT_CLIS))
def test_other_clis_refuse_weights_that_run_code(capsys, tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    script, write, argv = WEIGHT_CLIS[name]
    marker = tmp_path / "pwned"
    evil = write(tmp_path / ("evil.pth" if write is _evil_pth else "evil.pkl"), marker)
    code, output = _run_cli(capsys, script, argv(tmp_path, evil))
    if name == "convert-torchvision (.pkl)":  # torch.load refuses a plain pickle at its start
        _assert_refused(code, output, marker, evil, "torch.load(weights_only=True) failed")
    else:
        _assert_refused(code, output, marker, evil, "Refusing to load", "'io.open'")


@pytest.mark.parametrize("trained", [False, True])
def test_model_zoo_get_refuses_weights_that_run_code(tmp_path, monkeypatch, trained):
    marker = tmp_path / "pwned"
    evil = _evil_pkl(tmp_path / "evil.pkl", marker)
    if trained:
        monkeypatch.setitem(model_zoo.CHECKPOINT_URLS, TOY_NAME, evil)
    opts = CPU if trained else ["MODEL.WEIGHTS", evil, *CPU]
    with pytest.raises(UnsafeCheckpointError) as info:
        model_zoo.get(TOY_NAME, trained=trained, opts=opts)
    assert not marker.exists()
    assert exit_code(info.value) == 2 and "io.open" in one_line(info.value)


def _toy_model():
    return Trainer.build_model(setup_cfg(SEMANTIC, CPU))


@pytest.fixture(scope="module")
def toy_state():
    torch.manual_seed(0)
    return {k: v.detach().clone() for k, v in _toy_model().state_dict().items()}


@pytest.mark.parametrize("variant", ["protocol-2", "protocol-4", "protocol-5", "numpy._core"])
def test_good_pkl_still_loads(tmp_path, toy_state, variant):
    """Detectron2's ``.pkl`` format (numpy arrays, as the converters write it) loads with the
    restricted unpickler, whatever the pickle protocol and numpy's module names (numpy 2 writes
    ``numpy._core``), and the weights equal the arrays."""
    rng = np.random.default_rng(0)
    arrays = {k: rng.standard_normal(v.shape).astype(v.numpy().dtype) for k, v in toy_state.items()}
    data = {"model": arrays, "__author__": "test", "matching_heuristics": True}
    path = tmp_path / "good.pkl"
    if variant == "protocol-4":
        write_d2_weights(data, str(path))  # what tools/convert-*.py write
    else:
        blob = pickle.dumps(data, protocol=5 if variant == "protocol-5" else 2)
        if variant == "numpy._core":
            assert b"numpy.core.multiarray\n_reconstruct" in blob
            blob = blob.replace(b"numpy.core.multiarray\n", b"numpy._core.multiarray\n")
        path.write_bytes(blob)
    model = _toy_model()
    load_weights(model, str(path), strict=False)
    for k, v in model.state_dict().items():
        if k in arrays and not k.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(v.numpy(), arrays[k], err_msg=k)


def test_caffe2_style_pkl_is_read_like_detectron2(tmp_path):
    path = tmp_path / "R-50.pkl"
    blobs = {"conv1_w": np.ones((2, 2), np.float32), "conv1_w_momentum": np.zeros(1)}
    path.write_bytes(pickle.dumps({"blobs": blobs}, protocol=2))
    data = safe_loading.read_d2_pkl(str(path))
    assert data["__author__"] == "Caffe2" and data["matching_heuristics"]
    assert list(data["model"]) == ["conv1_w"]


@pytest.mark.slow
def test_eval_only_with_an_entry_detectron2_cannot_load_is_one_line(tmp_path, toy_state):
    """Was ``ValueError: Unsupported type found in checkpoint!`` with a traceback."""
    path = tmp_path / "strange.pkl"
    model = {k: v.numpy() for k, v in toy_state.items()}
    model["sem_seg_head.predictor.weight"] = "not an array"
    write_d2_weights({"model": model, "__author__": "test"}, str(path))
    args = ["--eval-only", "--config-file", SEMANTIC_CFG, *SMALL_SEMANTIC_OPTS]
    r = run(args + ["OUTPUT_DIR", str(tmp_path / "out"), "MODEL.WEIGHTS", str(path)])
    line = _assert_refused(r.returncode, r.stdout + r.stderr, tmp_path / "none", str(path))
    assert "'sem_seg_head.predictor.weight' is a str, not a tensor or numpy array" in line


# ----------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------
CONFIG_CLIS = {
    "train_net": ("train_net.py", []),
    "demo": ("demo/demo.py", ["--input", "IMG"]),
    "export_model": ("tools/export_model.py", ["--format", "onnx"]),
    "analyze_model": ("tools/analyze_model.py", []),
    "benchmark": ("tools/benchmark.py", []),
}


def _cli_argv(tmp_path, name, config, *extra):
    script, argv = CONFIG_CLIS[name]
    image = tmp_path / "img.png"
    cv2.imwrite(str(image), np.zeros((64, 80, 3), np.uint8))
    argv = [str(image) if a == "IMG" else a for a in argv]
    return script, [*extra, "--config-file", config, *argv, *CPU]


@pytest.mark.parametrize("chain", [False, True], ids=["file", "_BASE_"])
@pytest.mark.parametrize("name", list(CONFIG_CLIS))
def test_clis_refuse_configs_that_run_code(capsys, tmp_path, monkeypatch, name, chain):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(safe_loading.UNSAFE_CONFIG_ENV, raising=False)
    marker = tmp_path / "pwned"
    evil = _evil_yaml(tmp_path / "evil.yaml", marker)
    config = evil
    if chain:  # the tag is in a _BASE_ file
        (tmp_path / "top.yaml").write_text("_BASE_: evil.yaml\n")
        config = str(tmp_path / "top.yaml")
    script, argv = _cli_argv(tmp_path, name, config)
    code, output = _run_cli(capsys, script, argv)
    line = _assert_refused(code, output, marker, evil, "--allow-unsafe-config")
    assert "!!python/object/apply:builtins.open" in line


def test_model_zoo_get_config_refuses_configs_that_run_code(tmp_path, monkeypatch):
    monkeypatch.delenv(safe_loading.UNSAFE_CONFIG_ENV, raising=False)
    (tmp_path / "Toy").mkdir()
    marker = tmp_path / "pwned"
    _evil_yaml(tmp_path / "Toy" / "evil.yaml", marker)
    monkeypatch.setenv(model_zoo.CONFIGS_ENV, str(tmp_path))
    with pytest.raises(UnsafeConfigError) as info:
        model_zoo.get_config("Toy/evil.yaml")
    assert not marker.exists() and exit_code(info.value) == 2


def _trusted_yaml(tmp_path):
    """A config whose Python tag sets MODEL.WEIGHTS to a missing file, which the commands then
    name: the tag was evaluated and the config loaded."""
    path = tmp_path / "trusted.yaml"
    path.write_text(
        f"_BASE_: {SEMANTIC}\nMODEL:\n"
        '  WEIGHTS: !!python/object/apply:os.path.join ["/no/such/dir", "w.pth"]\n'
    )
    return str(path)


@pytest.mark.parametrize("name", list(CONFIG_CLIS))
def test_allow_unsafe_config_lets_a_trusted_config_through(capsys, tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(safe_loading.UNSAFE_CONFIG_ENV, "0")  # restored after the test
    trusted = _trusted_yaml(tmp_path)
    extra = ["--eval-only"] if name == "train_net" else []
    script, argv = _cli_argv(tmp_path, name, trusted, "--allow-unsafe-config", *extra)
    code, output = _run_cli(capsys, script, argv)
    _assert_refused(
        code, output, tmp_path / "none", "MODEL.WEIGHTS file not found", "/no/such/dir/w.pth"
    )
    assert safe_loading.unsafe_config_allowed()  # what launched worker processes inherit


def test_setup_cfg_opt_in(tmp_path, monkeypatch):
    monkeypatch.delenv(safe_loading.UNSAFE_CONFIG_ENV, raising=False)
    trusted = _trusted_yaml(tmp_path)
    with pytest.raises(UnsafeConfigError):
        setup_cfg(trusted)
    assert setup_cfg(trusted, allow_unsafe_config=True).MODEL.WEIGHTS == "/no/such/dir/w.pth"


# ----------------------------------------------------------------------------------------------
# Verified downloads (no network: the "downloaded" file is placed in Detectron2's cache)
# ----------------------------------------------------------------------------------------------
def _sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _cached_download(tmp_path, monkeypatch, url_path, state):
    """``http://127.0.0.1:9/<url_path>`` already in the cache ($FVCORE_CACHE); nothing listens
    on that port, so any real download attempt fails at once."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FVCORE_CACHE", str(cache))
    local = cache / url_path
    local.parent.mkdir(parents=True)
    torch.save({"model": state}, local)
    return f"http://127.0.0.1:9/{url_path}", local


def test_hash_in_file_name_mismatch_is_caught_and_removed(capsys, tmp_path, monkeypatch, toy_state):
    url, local = _cached_download(tmp_path, monkeypatch, f"{tmp_path.name}/x.pth", toy_state)
    wrong = "000000" if not _sha256(local).startswith("000000") else "111111"
    named = local.with_name(f"model_final_{wrong}.pth")
    os.replace(local, named)
    url = url.replace("x.pth", named.name)
    monkeypatch.chdir(tmp_path)
    # Checked at start-up; were it not, the unknown test set would stop the run right after.
    argv = ["--eval-only", "--config-file", SEMANTIC, "MODEL.WEIGHTS", url]
    code, output = _run_cli(capsys, "train_net.py", argv + ["DATASETS.TEST", '("nope",)'])
    _assert_refused(code, output, tmp_path / "none", url, "sha256", "removed it from the cache")
    assert not named.exists()


def test_hash_in_file_name_match_loads(tmp_path, monkeypatch, toy_state):
    url, local = _cached_download(tmp_path, monkeypatch, f"{tmp_path.name}/x.pth", toy_state)
    named = local.with_name(f"model_final_{_sha256(local)[:6]}.pth")
    os.replace(local, named)
    model = _toy_model()
    load_weights(model, url.replace("x.pth", named.name), strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, toy_state[k]), k
    assert named.exists()


def test_model_zoo_sha256_mismatch_is_caught_and_removed(tmp_path, monkeypatch, toy_state):
    monkeypatch.setattr(safe_loading, "_PUBLISHED_SHA256", {})
    url, local = _cached_download(tmp_path, monkeypatch, f"{tmp_path.name}/toy.pth", toy_state)
    monkeypatch.setitem(model_zoo.CHECKPOINT_URLS, TOY_NAME, url)
    monkeypatch.setitem(model_zoo.CHECKPOINT_SHA256, TOY_NAME, "0" * 64)
    with pytest.raises(WeightsHashMismatchError) as info:
        model_zoo.get(TOY_NAME, trained=True, opts=CPU)
    assert exit_code(info.value) == 2 and "model-zoo entry" in str(info.value)
    assert not local.exists()
    torch.save({"model": toy_state}, local)  # downloaded again, intact
    monkeypatch.setitem(model_zoo.CHECKPOINT_SHA256, TOY_NAME, _sha256(local))
    model = model_zoo.get(TOY_NAME, trained=True, opts=CPU)
    assert all(torch.equal(v, toy_state[k]) for k, v in model.state_dict().items())


class _Calls:
    """Unpickling it calls ``fn(*args)``."""

    def __init__(self, fn, *args):
        self.reduced = (fn, args)

    def __reduce__(self):
        return self.reduced


@pytest.mark.parametrize(
    "fn,args",
    [
        (os.system, ("touch {marker}",)),
        (subprocess.call, (["touch", "{marker}"],)),
        (builtins.exec, ("open('{marker}', 'w')",)),
        (builtins.eval, ("open('{marker}', 'w')",)),
    ],
    ids=["os.system", "subprocess.call", "exec", "eval"],
)
def test_restricted_unpickler_refuses_code_by_name(tmp_path, fn, args):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    args = tuple(
        a.format(marker=marker) if isinstance(a, str) else [x.format(marker=marker) for x in a]
        for a in args
    )
    path.write_bytes(pickle.dumps({"model": {"w": _Calls(fn, *args)}, "__author__": "x"}))
    with pytest.raises(UnsafeCheckpointError) as info:
        safe_loading.load_pickled_weights(str(path))
    assert not marker.exists()
    assert f"'{fn.__module__}.{fn.__name__}'" in str(info.value) and str(path) in str(info.value)
