"""The C loops' build cache: keyed by the CPU and torch's version, so a library built for another CPU is rebuilt,
never loaded; a failed build leaves torch's kernels."""

import subprocess
from pathlib import Path

import pytest

from engine.cpu import kernels
from engine.cpu.kernels import FLAGS, CpuKernels


@pytest.fixture
def fake_compiler(monkeypatch, tmp_path):
    """Compiler runs that write their output file and are counted, in a cache folder of the test's own."""
    monkeypatch.setenv("GUIDANCE_LAB_CACHE", str(tmp_path))
    monkeypatch.setattr(kernels.shutil, "which", lambda name: f"/usr/bin/{name}")
    runs = []

    def run(command, **kwargs):
        runs.append(command)
        Path(command[command.index("-o") + 1]).write_bytes(b"built")
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(kernels.subprocess, "run", run)
    return runs


def test_a_library_built_for_another_cpu_is_rebuilt_not_loaded(fake_compiler, monkeypatch):
    monkeypatch.setattr(kernels, "cpu_identity", lambda: "vendor_id=AuthenticAMD\nflags=avx2 avx512f")
    theirs = kernels._build(FLAGS, "gl_test")
    built_for_them = len(fake_compiler)
    assert theirs.exists() and built_for_them > 0

    monkeypatch.setattr(kernels, "cpu_identity", lambda: "vendor_id=GenuineIntel\nflags=avx2")
    ours = kernels._build(FLAGS, "gl_test")
    assert ours != theirs and ours.exists()
    assert len(fake_compiler) == 2 * built_for_them  # built anew for this CPU

    assert kernels._build(FLAGS, "gl_test") == ours
    assert len(fake_compiler) == 2 * built_for_them  # and found in the cache the next time


def test_the_key_holds_torchs_version(fake_compiler, monkeypatch):
    first = kernels._build(FLAGS, "gl_test")
    monkeypatch.setattr(kernels.torch, "__version__", "0.0.1-other")
    assert kernels._build(FLAGS, "gl_test") != first


def test_the_cpu_identity_names_the_instruction_sets():
    identity = kernels.cpu_identity()
    assert identity and ("flags=" in identity or "Features=" in identity or "machine=" in identity)


def test_a_failed_build_leaves_torchs_kernels(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("GUIDANCE_LAB_CACHE", str(tmp_path))

    def refuse(command, **kwargs):
        raise subprocess.CalledProcessError(1, command, stderr=b"error: unknown flag")

    monkeypatch.setattr(kernels.subprocess, "run", refuse)
    loops = CpuKernels(FLAGS + ("-DGL_FAILED_BUILD",))  # a namespace no earlier test has loaded
    assert not loops.available and not loops.has_winograd
