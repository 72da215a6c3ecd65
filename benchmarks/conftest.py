"""Shared fixtures for the benchmark suites (run with ``pytest benchmarks``)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
