"""The user-facing docs stay true: every link and anchor resolves, every `make` target and `vlv`
subcommand the README names exists, and the README quotes no measured number (those live in
docs/RESULTS.md, generated, and docs/NOTES.md, dated)."""

import re
import subprocess
from pathlib import Path

import pytest

from vlv import cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
        elif not in_code and (m := re.match(r"#{1,6} (.+)", line)):
            s = slug(m.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            out.add(s if n == 0 else f"{s}-{n}")
    return out


def prose(path: Path) -> str:
    """The file without its fenced code blocks (links inside them are not links)."""
    return re.sub(r"^\s*```.*?^\s*```", "", path.read_text(), flags=re.S | re.M)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_and_anchor_resolves(doc):
    bad = []
    for target in LINK.findall(prose(doc)):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked offline
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists():
            bad.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            bad.append(f"{target}: no heading with that anchor in {path.relative_to(ROOT)}")
    assert not bad, bad


def test_readme_names_only_make_targets_and_vlv_commands_that_exist():
    text = README.read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), flags=re.M))
    named = set(re.findall(r"\bmake ([a-z][\w-]*)", text))
    assert named and named <= targets, named - targets
    subcommands = set(cli.build_parser()._subparsers._group_actions[0].choices)
    used = set(re.findall(r"\bvlv ([a-z][\w-]*)", text))
    assert used and used <= subcommands, used - subcommands


def test_readme_is_a_short_guide_that_quotes_no_measured_number():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    assert not re.findall(r"\d+(?:\.\d+)?\s?%", text), "measured percentages belong in docs/RESULTS.md or docs/NOTES.md"
    assert not re.findall(r"\d+(?:\.\d+)?\s?(?:samples/s|s/step|min \d+ s)", text)
    assert "<!--" not in text, "generated blocks live in docs/RESULTS.md"


def test_no_tracked_file_points_at_the_removed_probes():
    """scripts/probes is gone; docs/NOTES.md says how to get a probe back from git."""
    files = subprocess.run(["git", "ls-files", "src", "pipelines", "scripts", "tests", "docs", "README.md", "benchmarks",
                            "params.yaml", "profiles", "Makefile", "dvc.yaml"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    needle = "scripts/" + "probes/"
    hits = [f for f in files if f != "docs/NOTES.md" and (ROOT / f).is_file() and not f.endswith((".png", ".safetensors", ".bin"))
            and needle in (ROOT / f).read_text(errors="ignore")]
    assert not hits, hits
