"""What the tests of the C loops share: the mark for a machine without compilers, and the loops where a CPU has
the instructions a test needs."""

import shutil

import pytest

from engine.cpu import loops_wanted
from engine.cpu.kernels import CpuKernels

needs_compiler = pytest.mark.skipif(shutil.which("cc") is None or shutil.which("c++") is None or not loops_wanted(),
                                    reason="no C and C++ compilers to build the loops, or LAB_CPU_LOOPS=off")


def kernels_with(feature: str, missing: str) -> CpuKernels:
    """The built loops where `feature` (a CpuKernels property such as "has_geglu") holds; the test is skipped,
    saying `missing`, elsewhere."""
    built = CpuKernels()
    if not loops_wanted() or not getattr(built, feature):
        pytest.skip(missing)
    return built
