"""nrd_rsp: RSP and NRD decoders for Detectron2.

Importing the package registers everything with Detectron2: the datasets (``nrd_rsp.data``),
the heads and meta-architectures (``nrd_rsp.modeling``). Config keys are added by
``add_nrd_rsp_config``.
"""

import warnings

with warnings.catch_warnings():
    # fvcore, imported by Detectron2, calls the deprecated torch.jit.script at import: four lines
    # of noise on the stderr of every command line, around its one-line errors.
    warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", FutureWarning)
    from . import (
        data,  # noqa: F401  (registers datasets)
        modeling,  # noqa: F401  (registers heads and meta-architectures)
    )
    from .config import add_nrd_rsp_config

__all__ = ["add_nrd_rsp_config"]
__version__ = "0.1.0"
