"""The optional compiled kernel of the RSE's window attention without autograd (float32, CPU).
Everything else is in setup.cfg. Without a C compiler the package installs without the kernel,
and the RSE uses its PyTorch ops (``nrd_rsp.modeling.window_attention``)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "nrd_rsp._window_attention",
            ["projects/nrd_rsp/modeling/csrc/window_attention.c"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
