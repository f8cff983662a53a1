"""The opt-in deterministic mode (``DETERMINISTIC_ALGORITHMS``) and the GPU throughput settings
of a training process.

:func:`setup_determinism` runs once per training process, after Detectron2's ``default_setup``
(which sets ``cudnn.benchmark`` from ``CUDNN_BENCHMARK``). With ``DETERMINISTIC_ALGORITHMS`` it
asks PyTorch for deterministic kernels (``torch.use_deterministic_algorithms(True,
warn_only=True)``), sets ``cudnn.deterministic``, turns cuDNN autotuning off and sets
``CUBLAS_WORKSPACE_CONFIG`` (cuBLAS needs it for deterministic results), then logs what stays
nondeterministic. GETTING_STARTED.md, "Mixed precision and determinism", says what is
bit-exact where.
"""

import logging
import os

import torch

__all__ = ["CUBLAS_WORKSPACE", "STILL_NONDETERMINISTIC", "setup_determinism"]

logger = logging.getLogger("nrd_rsp")

# One of the two settings that the CUDA documentation gives for deterministic cuBLAS.
CUBLAS_WORKSPACE = ":4096:8"

# Operations of this project without a deterministic CUDA kernel in PyTorch
# (torch.use_deterministic_algorithms' list); with warn_only=True each warns when first used.
STILL_NONDETERMINISTIC = (
    "the backward of bilinear F.interpolate (every head's upsampling to the input size)",
    "cross-entropy (NLLLoss) on CUDA tensors",
)


def setup_determinism(cfg, log=logger.info) -> bool:
    """Apply ``cfg.DETERMINISTIC_ALGORITHMS`` to this process; returns whether it is on. Off:
    nothing is changed (``CUDNN_BENCHMARK`` as Detectron2 set it)."""
    if not cfg.DETERMINISTIC_ALGORITHMS:
        return False
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    log(
        "DETERMINISTIC_ALGORITHMS: torch.use_deterministic_algorithms(True, warn_only=True), "
        "cudnn.deterministic True, cudnn.benchmark False (CUDNN_BENCHMARK ignored), "
        f"CUBLAS_WORKSPACE_CONFIG={os.environ['CUBLAS_WORKSPACE_CONFIG']}. Still "
        f"nondeterministic on GPU (no deterministic kernel; PyTorch warns): "
        f"{'; '.join(STILL_NONDETERMINISTIC)}."
    )
    return True
