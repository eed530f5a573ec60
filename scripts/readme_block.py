"""Replace one generated block of README.md (between a start and an end marker), or check it.
Shared by scripts/run_report.py and scripts/sweep_report.py."""

from __future__ import annotations

import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def write(start: str, end: str, body: str, check: bool, who: str, what: str) -> int:
    """0: written (or, with ``check``, up to date); 1: ``check`` found it stale; 2: no such block."""
    text = README.read_text()
    if start not in text or end not in text:
        print(f"{who}: README.md has no {start} ... {end} block", file=sys.stderr)
        return 2
    head, rest = text.split(start, 1)
    new = f"{head}{start}\n\n{body}\n\n{end}{rest.split(end, 1)[1]}"
    if check:
        if new != text:
            print(f"{who}: README.md's {what} is stale; run scripts/{who}.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    print(f"{who}: README.md's {what} rewritten")
    return 0
