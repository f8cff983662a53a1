#!/usr/bin/env python
"""Turn a training checkpoint into a publishable model-zoo checkpoint.

    python tools/publish_model.py output/toy/rsp_R_18/model_final.pth \\
        --metrics output/toy/rsp_R_18/eval_results.json --output-dir release/

Keeps only the weights (``"model"``, plus ``"__author__"`` when present or given), dropping the
optimizer, scheduler, iteration and trainer state, and writes

* ``model_final_<h>.pth`` where ``<h>`` is the first 6 hex digits of the SHA-256 of that file
  (Detectron2's naming), loadable with ``DetectionCheckpointer`` / ``MODEL.WEIGHTS``;
* ``metrics.json``: ``{"checkpoint", "sha256", "metrics", "source": {...}}`` with the evaluation
  results (``train_net.py`` writes them to ``OUTPUT_DIR/eval_results.json``; that file next to
  the input is used when ``--metrics`` is not given).

The default output directory is ``published/`` next to the input, never the training directory
itself, whose ``metrics.json`` holds the training log.
"""

import hashlib
import io
import json
import os
import sys
import tempfile

import torch

from nrd_rsp.converters import torch_load_tensors
from nrd_rsp.errors import ConfigError, OneLineArgumentParser, exit_on_error

_SIDECAR = "metrics.json"


def sha256sum(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def load_training_checkpoint(path):
    """Load ``path`` (a ``torch.save``-d dict) on CPU with ``weights_only=True``."""
    if not os.path.isfile(path):
        raise ConfigError(f"Checkpoint not found: '{path}'.")
    ckpt = torch_load_tensors(path, "a PyTorch checkpoint")
    if not isinstance(ckpt, dict):
        raise ConfigError(f"'{path}' holds a {type(ckpt).__name__}, not a checkpoint dict.")
    return ckpt


def extract_weights(ckpt, path="checkpoint"):
    """The model state dict of a Detectron2 checkpoint (``ckpt["model"]``) or of a bare state
    dict, as contiguous CPU tensors, with a DDP ``module.`` prefix removed."""
    state = ckpt.get("model", ckpt)
    if not isinstance(state, dict) or not state:
        raise ConfigError(f"'{path}' has no model weights (no 'model' state dict).")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConfigError(f"'{path}' is not a model state dict: non-tensor entries {bad[:5]}.")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def load_metrics(path):
    if not os.path.isfile(path):
        raise ConfigError(f"Metrics file not found: '{path}'.")
    try:
        with open(path) as f:
            metrics = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"'{path}' is not a JSON file ({e}); pass train_net.py's eval_results.json."
        ) from e
    if not isinstance(metrics, dict):
        raise ConfigError(f"'{path}' must hold a JSON object of evaluation results.")
    return metrics


def _check_sidecar_writable(output_dir):
    """Refuse to overwrite a ``metrics.json`` that is not one of ours (e.g. Detectron2's
    training log in OUTPUT_DIR)."""
    path = os.path.join(output_dir, _SIDECAR)
    if not os.path.exists(path):
        return
    try:
        with open(path) as f:
            old = json.load(f)
        ours = isinstance(old, dict) and "sha256" in old and "checkpoint" in old
    except (json.JSONDecodeError, UnicodeDecodeError):
        ours = False
    if not ours:
        raise ConfigError(
            f"{path} exists and is not a publish_model.py sidecar (a training log?). "
            "Pass another --output-dir."
        )


def publish(checkpoint, metrics_file=None, output_dir=None, author=None):
    """Write ``model_final_<sha256[:6]>.pth`` and ``metrics.json`` into ``output_dir``.

    Returns:
        (path of the published checkpoint, sidecar dict).
    """
    ckpt = load_training_checkpoint(checkpoint)
    weights = extract_weights(ckpt, checkpoint)
    if metrics_file is None:
        default = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "eval_results.json")
        metrics_file = default if os.path.isfile(default) else None
    metrics = load_metrics(metrics_file) if metrics_file else {}
    output_dir = output_dir or os.path.join(
        os.path.dirname(os.path.abspath(checkpoint)), "published"
    )
    os.makedirs(output_dir, exist_ok=True)
    _check_sidecar_writable(output_dir)

    published = {"model": weights}
    author = author or ckpt.get("__author__")
    if isinstance(author, str) and author:
        published["__author__"] = author
    # Serialise in memory: torch.save names the archive after the file, so saving to a temporary
    # file would make the bytes (and the hash) depend on its random name. In memory the same
    # weights always give the same bytes, hence the same model_final_<h>.pth.
    buf = io.BytesIO()
    torch.save(published, buf)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    out = os.path.join(output_dir, f"model_final_{digest[:6]}.pth")
    fd, tmp = tempfile.mkstemp(suffix=".tmp", prefix=".model_final_", dir=output_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
        os.replace(tmp, out)  # atomic: never a half-written model_final_<h>.pth
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise

    dropped = sorted(k for k in ckpt if k not in ("model", "__author__")) if "model" in ckpt else []
    sidecar = {
        "checkpoint": os.path.basename(out),
        "sha256": digest,
        "metrics": metrics,
        "source": {
            "checkpoint": os.path.abspath(checkpoint),
            "checkpoint_sha256": sha256sum(checkpoint),
            "iteration": ckpt.get("iteration"),
            "metrics_file": os.path.abspath(metrics_file) if metrics_file else None,
            "dropped_keys": dropped,
        },
        "state_dict_numel": int(sum(v.numel() for v in weights.values() if v.is_floating_point())),
    }
    with open(os.path.join(output_dir, _SIDECAR), "w") as f:
        json.dump(sidecar, f, indent=2)
    return out, sidecar


def build_parser():
    p = OneLineArgumentParser(prog="publish_model.py", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", metavar="IN.pth", help="checkpoint written by train_net.py")
    p.add_argument(
        "--metrics", help="evaluation results (default: eval_results.json next to IN.pth, if any)"
    )
    p.add_argument("--output-dir", help="where to write (default: published/ next to IN.pth)")
    p.add_argument("--author", help="value of '__author__' in the published file")
    return p


@exit_on_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    out, sidecar = publish(args.checkpoint, args.metrics, args.output_dir, args.author)
    dropped = ", ".join(sidecar["source"]["dropped_keys"]) or "nothing"
    print(
        f"Dropped: {dropped}. sha256: {sidecar['sha256']}. "
        f"Metrics: {os.path.join(os.path.dirname(out), _SIDECAR)}"
    )
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
