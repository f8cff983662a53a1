"""nrd_rsp: RSP and NRD decoders for Detectron2.

Importing the package registers everything with Detectron2: the datasets (``nrd_rsp.data``),
the heads and meta-architectures (``nrd_rsp.modeling``). Config keys are added by
``add_nrd_rsp_config``.
"""
from .config import add_nrd_rsp_config
from . import data  # noqa: F401  (registers datasets)
from . import modeling  # noqa: F401  (registers heads and meta-architectures)

__version__ = "0.1.0"
