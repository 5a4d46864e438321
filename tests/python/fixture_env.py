"""What the Python tests share: where the fixtures and the m3embed binary are (ctest sets
M3_FIXTURES_DIR and M3_BINARY), and FlagEmbedding's BGEM3FlagModel imported with the
fixture script's transformers-5 workaround."""
from __future__ import annotations

import os
import sys
from pathlib import Path

SOURCE_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FIXTURES = Path(os.environ.get("M3_FIXTURES_DIR", str(SOURCE_FIXTURES)))
BINARY = os.environ.get("M3_BINARY")


def import_bge_m3():
    sys.path.insert(0, str(SOURCE_FIXTURES))
    try:
        from make_fixtures import import_bge_m3 as imported
    finally:
        sys.path.pop(0)
    return imported()
