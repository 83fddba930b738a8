"""The gateway stays light: importing it (and its CLI) pulls in no torch and no engine."""

from __future__ import annotations

import subprocess
import sys


def test_no_torch_and_no_engine_packages() -> None:
    code = (
        "import sys, inferno_gateway, inferno_gateway.cli, inferno_gateway.testing\n"
        "heavy = ('torch', 'inferno_backend', 'inferno_inference', 'inferno_models',"
        " 'inferno_memory')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
