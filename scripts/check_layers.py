#!/usr/bin/env python3
"""Checks that src/m3's layers import downward only (docs/contributing.md, "The layers"):
every `#include "m3/<dir>/..."` in a layer names itself or a layer it may depend on, and
the CMake files link no group (the graph must need none). Exit 1, listing each offence."""
import pathlib
import re
import sys

# Each layer and what it may include (its own directory is always allowed).
ALLOWED = {
    "core": set(),
    "tokenizer": {"core"},
    "checkpoint": {"core"},
    "hub": {"core"},
    "model": {"core", "checkpoint"},
    "memory": {"core", "checkpoint", "model"},
    "io": {"core", "checkpoint", "model"},
    "backend": {"core", "checkpoint", "model", "memory"},
    "graph": {"core", "checkpoint", "model", "memory", "backend", "tokenizer"},
    "runtime": {"core", "checkpoint", "model", "memory", "backend", "graph", "tokenizer"},
    "server": {"core", "checkpoint", "model", "memory", "backend", "graph", "tokenizer", "runtime", "io", "hub"},
    "cli": {"core", "checkpoint", "model", "memory", "backend", "graph", "tokenizer", "runtime", "io", "server", "hub"},
}
INCLUDE = re.compile(r'#include "m3/([a-z_]+)/')


def main() -> int:
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    offences = []
    src = root / "src" / "m3"
    for path in sorted(src.rglob("*")):
        if path.suffix not in {".h", ".cpp", ".cu", ".cuh"}:
            continue
        layer = path.relative_to(src).parts[0]
        if layer not in ALLOWED:
            offences.append(f"{path}: directory {layer!r} is not a known layer")
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            match = INCLUDE.search(line)
            if match and match.group(1) != layer and match.group(1) not in ALLOWED[layer]:
                offences.append(f"{path}:{number}: layer {layer!r} includes {match.group(1)!r} (above it)")
    for cmake in [root / "CMakeLists.txt", *sorted((root / "tests").rglob("CMakeLists.txt"))]:
        if "LINK_GROUP" in cmake.read_text():
            offences.append(f"{cmake}: links a group (the layers must form a DAG without one)")
    for offence in offences:
        print(offence)
    print(f"layers: {len(offences)} offence(s)")
    return 1 if offences else 0


if __name__ == "__main__":
    sys.exit(main())
