"""The one compiled piece: the tracker's frame step, ``pipeline/runtime/_bytetrack.c``.

Plain C loaded with ctypes (no Python headers needed), built where a C compiler is
found. The build is optional: without a compiler the install goes on, and
``edgepipe run --track`` runs the same step in NumPy: at 50 objects the update 6 times
slower, tracking with its counters 2.5-4 times (pipeline/runtime/bytetrack.py). Everything else is in pyproject.toml."""

import sys

from setuptools import Extension, setup

unix = sys.platform != "win32"
setup(
    ext_modules=[
        Extension(
            "pipeline.runtime._bytetrack",
            ["pipeline/runtime/_bytetrack.c"],
            # -O3 without Python's own -fwrapv vectorises the loops (the step at 50 objects
            # in 0.75x the time); no fused multiply-add, so that it rounds as NumPy does
            # and the two give the same tracks
            extra_compile_args=["-O3", "-fno-wrapv", "-ffp-contract=off"] if unix else ["/O2", "/fp:precise"],
            libraries=["m"] if unix else [],
            optional=True,
        )
    ]
)
