"""The benchmarks (bench/) are a top-level directory of the checkout, not an installed package."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:  # `python -m pytest` from the root has it already; a bare `pytest` may not
    sys.path.insert(0, ROOT)
