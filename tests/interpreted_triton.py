"""Imported first by the interpreted Triton case files (triton_*interpreted_cases.py).

TRITON_INTERPRET must be set before triton.language is imported (its own tl.sum,
tl.cumsum, ... are @jit functions decorated at import), so tests/test_kernels_triton.py
runs those files in a subprocess with the variable set; run any other way, they skip.
"""
from __future__ import annotations

import os
import sys

if "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 before triton is imported (run via test_kernels_triton.py)",
                allow_module_level=True)
