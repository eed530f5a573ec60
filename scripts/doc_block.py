"""Replace one generated block of a Markdown file (between a start and an end marker), or check it.

Shared by the report scripts (scripts/run_report.py, scripts/ablations.py report,
scripts/sweep_report.py, scripts/paper_memory.py), which write their blocks into
docs/RESULTS.md; each script's --check compares instead of writing (tests/test_reports.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "RESULTS.md"


def link(path: Path, target: Path = RESULTS) -> str:
    """``path`` (e.g. a PNG) as a Markdown link relative to the file the block goes into."""
    return Path(os.path.relpath(path, target.parent)).as_posix()


def write(start: str, end: str, body: str, check: bool, who: str, what: str, fix: str = "",
          target: Path = RESULTS) -> int:
    """0: written (or, with ``check``, up to date); 1: ``check`` found it stale; 2: no such block.
    ``fix`` is the command that rewrites the block (default: scripts/<who>.py)."""
    name = target.relative_to(ROOT).as_posix() if target.is_relative_to(ROOT) else str(target)
    text = target.read_text() if target.is_file() else ""
    if start not in text or end not in text:
        print(f"{who}: {name} has no {start} ... {end} block", file=sys.stderr)
        return 2
    head, rest = text.split(start, 1)
    new = f"{head}{start}\n\n{body}\n\n{end}{rest.split(end, 1)[1]}"
    if check:
        if new != text:
            print(f"{who}: {name}'s {what} is stale; run {fix or f'python scripts/{who}.py'}", file=sys.stderr)
            return 1
        return 0
    target.write_text(new)
    print(f"{who}: {name}'s {what} rewritten")
    return 0
