"""The repository speaks for itself: no pointer to anything a clone of the repository does
not have."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Written in pieces, so that this file does not match itself: the parent folder's "shared"
# material, its design spec, and tracker issue numbers.
OUTSIDE = re.compile(
    "|".join(
        [r"\.\./" + "shared", "shared" + " folder", "DESIGN" + r"\.md", "[Ii]ssue" + r" #?\d+"]
    )
)


def test_nothing_points_outside_the_repository():
    files = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]
    for folder in ("pyppo", "csrc", "tests", "benchmarks", "scripts"):
        files += [
            p
            for p in (ROOT / folder).rglob("*")
            if p.is_file() and p.suffix in (".py", ".md", ".h", ".cpp", ".cu", ".cuh", ".sh")
        ]
    hits = [
        f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
        for p in files
        if p.name != "test_layout.py"
        for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert hits == []
