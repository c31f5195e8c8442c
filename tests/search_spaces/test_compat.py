"""The torchvision shim: after importing our packages, timm (and torchvision) import on a
CPU-only torch; where torchvision's own ops load, the shim changes nothing."""

from __future__ import annotations

import subprocess
import sys


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)


def test_timm_imports_after_our_package():
    proc = run("import search_spaces, timm, torchvision, torch; "
               "print(hasattr(torch.ops.torchvision, 'nms'))")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "True"


def test_shim_defines_schemas_only_when_real_ops_are_missing():
    code = ("from search_spaces import _compat; "
            "print(_compat._torchvision_ops_load(), _compat._library is not None)")
    proc = run(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    real_ops, shimmed = proc.stdout.split()
    assert shimmed == ("False" if real_ops == "True" else "True")  # exactly one of the two
