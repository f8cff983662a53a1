"""Reading files that other people wrote without running their code
(docs/RELIABILITY.md, "Security").

* **Weights.** :func:`load_pickled_weights` reads a Detectron2 ``.pkl`` with a ``pickle``
  unpickler that resolves only the globals a weights file needs (:data:`ALLOWED_GLOBALS`: numpy
  arrays, dtypes and scalars, ``OrderedDict``, basic containers); any other global is an
  :class:`~nrd_rsp.errors.UnsafeCheckpointError` before it is called. ``torch.save`` files are
  read with ``torch.load(weights_only=True)``, whose refusals :func:`unsafe_global_in` names.
* **Configs.** :func:`merge_config_file` is Detectron2's ``merge_from_file`` with
  ``yaml.safe_load`` only, ``_BASE_`` files included; a Python tag is an
  :class:`~nrd_rsp.errors.UnsafeConfigError` unless unsafe configs are allowed
  (:func:`allow_unsafe_config`, ``--allow-unsafe-config``, ``$NRD_RSP_ALLOW_UNSAFE_CONFIG=1``).
* **Downloads.** :func:`fetch_weights` fetches a weights URL into Detectron2's cache and checks
  it against the sha256 that its file name (``model_final_<sha256[:6]>.pth``, the naming of
  ``tools/publish_model.py``) or the model zoo (:func:`register_sha256`) records.
"""

import argparse
import hashlib
import logging
import os
import pickle
import re
from typing import Dict, Optional
from urllib.parse import urlparse

import yaml
from detectron2.utils.file_io import PathManager

from .errors import UnsafeCheckpointError, UnsafeConfigError, WeightsHashMismatchError

__all__ = [
    "ALLOWED_GLOBALS",
    "UNSAFE_CONFIG_ENV",
    "load_pickled_weights",
    "read_d2_pkl",
    "unsafe_global_in",
    "unsafe_weights_message",
    "allow_unsafe_config",
    "unsafe_config_allowed",
    "add_allow_unsafe_config_argument",
    "merge_config_file",
    "register_sha256",
    "expected_sha256",
    "sha256sum",
    "fetch_weights",
]

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------
_NUMPY = [  # numpy 1.x names, and numpy 2's (numpy._core); ndarrays and scalars reduce to these
    (core, name)
    for prefix in ("numpy.core", "numpy._core")
    for core, name in (
        (f"{prefix}.multiarray", "_reconstruct"),  # ndarray, pickle protocols 2 to 4
        (f"{prefix}.multiarray", "scalar"),  # numpy scalars
        (f"{prefix}.numeric", "_frombuffer"),  # ndarray, pickle protocol 5
    )
]
_BUILTINS = ("dict", "list", "tuple", "set", "frozenset", "bytes", "bytearray", "str", "int")
_BUILTINS += ("float", "complex", "bool")
ALLOWED_GLOBALS = frozenset(
    _NUMPY
    + [("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict")]
    + [("_codecs", "encode")]  # bytes in Python 3 pickles of protocol 2
    + [(b, name) for b in ("builtins", "__builtin__") for name in _BUILTINS]  # Python 3 / 2
)


def unsafe_weights_message(path: str, name: str) -> str:
    return (
        f"Refusing to load '{path}': it would call '{name}', which a weights file never needs "
        "(only arrays, tensors, containers, strings and numbers); nothing from it was run. Use "
        "weights from a source you trust."
    )


class _WeightsUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only :data:`ALLOWED_GLOBALS`."""

    def __init__(self, file, path: str):
        super().__init__(file, encoding="latin1")  # as Detectron2: Python 2 pickles
        self._path = path

    def find_class(self, module, name):
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafeCheckpointError(unsafe_weights_message(self._path, f"{module}.{name}"))


def load_pickled_weights(path: str):
    """``pickle.load`` of ``path`` (as Detectron2 reads ``.pkl``) restricted to
    :data:`ALLOWED_GLOBALS`; ``UnsafeCheckpointError`` naming any other global and the file."""
    with PathManager.open(path, "rb") as f:
        return _WeightsUnpickler(f, path).load()


def read_d2_pkl(path: str) -> Dict:
    """A ``.pkl`` weights file as ``DetectionCheckpointer._load_file`` returns it, read with
    :func:`load_pickled_weights`: Detectron2's format (``"model"`` and ``"__author__"``) as is,
    else a Caffe2 / Detectron1 one (``"blobs"``, ``*_momentum`` dropped) for name matching."""
    data = load_pickled_weights(path)
    if not isinstance(data, dict):
        raise TypeError(f"a {type(data).__name__}, not a dict")
    if "model" in data and "__author__" in data:
        logger.info(f"Reading a file from '{data['__author__']}'")
        return data
    if "blobs" in data:
        data = data["blobs"]
    data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
    return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}


def unsafe_global_in(e: BaseException) -> Optional[str]:
    """The global named by a refusal of ``torch.load(weights_only=True)``, else None."""
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
    return m.group(1) if m else None


# ----------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------
UNSAFE_CONFIG_ENV = "NRD_RSP_ALLOW_UNSAFE_CONFIG"


def allow_unsafe_config(enabled: bool = True) -> None:
    """Allow (or forbid again) YAML configs with Python tags in this process and the processes
    it starts (through ``$NRD_RSP_ALLOW_UNSAFE_CONFIG``, which launched workers inherit)."""
    if enabled:
        os.environ[UNSAFE_CONFIG_ENV] = "1"
    else:
        os.environ.pop(UNSAFE_CONFIG_ENV, None)


def unsafe_config_allowed() -> bool:
    return os.environ.get(UNSAFE_CONFIG_ENV, "") == "1"


class _AllowUnsafeConfig(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, True)
        allow_unsafe_config()


def add_allow_unsafe_config_argument(parser: argparse.ArgumentParser):
    """Add ``--allow-unsafe-config`` to ``parser`` (given, it calls :func:`allow_unsafe_config`
    while the arguments are parsed); returns ``parser``."""
    parser.add_argument(
        "--allow-unsafe-config",
        action=_AllowUnsafeConfig,
        help="read config files with Python YAML tags (they can run code): only files you trust",
    )
    return parser


def merge_config_file(cfg, path: str, allow_unsafe: Optional[bool] = None) -> None:
    """``cfg.merge_from_file(path)`` with ``yaml.safe_load`` only, ``_BASE_`` files included.

    ``allow_unsafe``: Detectron2's fallback to ``yaml.unsafe_load`` for a file with Python tags
    (default: :func:`unsafe_config_allowed`). Raises ``UnsafeConfigError`` naming the file and
    the tag otherwise."""
    if allow_unsafe is None:
        allow_unsafe = unsafe_config_allowed()
    try:
        cfg.merge_from_file(path, allow_unsafe=allow_unsafe)
    except yaml.constructor.ConstructorError as e:
        mark = e.problem_mark
        where = f"{mark.name}, line {mark.line + 1}" if mark else path
        if mark and os.path.abspath(mark.name) != os.path.abspath(path):
            where += f" (a _BASE_ of {path})"
        tag = re.search(r"tag '([^']+)'", e.problem or "")
        tag = tag.group(1).replace("tag:yaml.org,2002:", "!!") if tag else e.problem
        raise UnsafeConfigError(
            f"Config file {where}: the YAML tag '{tag}' is not allowed (configs are read with "
            "yaml.safe_load; Python tags can run code). If you trust the file, pass "
            "--allow-unsafe-config."
        ) from None


# ----------------------------------------------------------------------------------------------
# Downloads
# ----------------------------------------------------------------------------------------------
_SHA256_IN_NAME = re.compile(r"^model_final_([0-9a-f]{6})\.pth$")
_PUBLISHED_SHA256: Dict[str, str] = {}
_VERIFIED = set()


def register_sha256(url: str, sha256: str) -> None:
    """Record the full sha256 of the file at ``url`` (the model zoo's published checkpoints)."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise ValueError(f"not a sha256 hex digest: '{sha256}'")
    _PUBLISHED_SHA256[url] = sha256


def expected_sha256(url: str) -> str:
    """The sha256 (or its leading hex digits) that the file at ``url`` must have: the one
    registered for it, else the ``<sha256[:6]>`` of a ``model_final_<sha256[:6]>.pth`` name, else
    ``""`` (nothing to check)."""
    plain = urlparse(url)._replace(query="", fragment="").geturl()
    if plain in _PUBLISHED_SHA256:
        return _PUBLISHED_SHA256[plain]
    m = _SHA256_IN_NAME.match(os.path.basename(urlparse(url).path))
    return m.group(1) if m else ""


def sha256sum(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def fetch_weights(url: str) -> str:
    """The local path of the weights at ``url`` (downloaded into Detectron2's cache by
    ``PathManager``), checked against :func:`expected_sha256`. On a mismatch a downloaded copy
    is removed from the cache and ``WeightsHashMismatchError`` raised."""
    local = PathManager.get_local_path(url)
    expected = expected_sha256(url)
    if not expected or not os.path.isfile(local):
        return local
    stat = os.stat(local)
    key = (os.path.abspath(local), stat.st_size, stat.st_mtime_ns, expected)
    if key in _VERIFIED:
        return local
    actual = sha256sum(local)
    if actual.startswith(expected):
        _VERIFIED.add(key)
        return local
    downloaded = urlparse(url).scheme not in ("", "file")
    if downloaded:
        os.remove(local)
    raise WeightsHashMismatchError(
        f"Weights '{url}' do not have the sha256 their "
        f"{'name' if len(expected) < 64 else 'model-zoo entry'} records ({expected[:12]}...; the "
        f"file has {actual[:12]}...): the download is corrupt or the file was changed"
        + (f"; removed it from the cache ({local})" if downloaded else f" ({local})")
        + ". Download it again, or check the URL."
    )
