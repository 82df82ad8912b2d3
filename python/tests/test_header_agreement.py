"""The ctypes declarations agree with include/tierkv.h."""

import re
from pathlib import Path

from tierkv import _native

HEADER = Path(__file__).resolve().parents[2] / "include" / "tierkv.h"


def test_every_constant_matches_the_header():
    defines = dict(re.findall(r"^#define TIERKV_([A-Z_]+) (\d+)\b", HEADER.read_text(), flags=re.M))
    # 13 statuses, 3 tiers, 2 priorities, 4 scorings, 5 placements, 4 block states, the ABI
    assert len(defines) == 32, sorted(defines)
    for name, value in defines.items():
        assert getattr(_native, name) == int(value), name
    assert _native.NO_SEQUENCE == 2**64 - 1


def test_every_header_function_is_declared():
    functions = set(re.findall(r"\b(tierkv_[a-z_]+)\(", HEADER.read_text()))
    declared = {"tierkv_last_error_copy"}  # not needed from Python: the binding copies the message itself
    source = Path(_native.__file__).read_text()
    missing = {name for name in functions if f'"{name}"' not in source} - declared
    assert not missing, f"not declared in _native.py: {sorted(missing)}"
