"""import pyppo: the extension's load errors say what to do."""

from __future__ import annotations

import subprocess
import sys

import torch

import pyppo


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_cuda_kernels_available_says_whether_the_ops_have_cuda_kernels():
    # What the dispatcher has registered for the CUDA key is the ground truth.
    has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key("pyppo::sanitize_", "CUDA")
    assert pyppo.cuda_kernels_available() is has_cuda
    assert torch._C._dispatch_has_kernel_for_dispatch_key("pyppo::sanitize_", "CPU")


def test_missing_extension_is_a_clear_import_error():
    result = run_python(
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'pyppo._C':\n"
        "            raise ImportError('simulated: no such file')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import pyppo\n"
    )
    assert result.returncode != 0
    assert "pyppo's extension failed to load" in result.stderr
    assert "pip install --no-build-isolation -e ." in result.stderr


def test_extension_built_for_another_torch_is_refused():
    result = run_python("import torch\ntorch.__version__ = '1.0.0'\nimport pyppo\n")
    assert result.returncode != 0
    assert "was built against torch" in result.stderr
    assert "torch 1.0.0 is installed" in result.stderr
