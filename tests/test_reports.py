"""docs/RESULTS.md is generated: every block is what its report script writes now.

Each script's --check rebuilds its block from the files in the repository and compares; a
stale block (new metrics, a changed card, new ablation runs) fails with the command that
rewrites it. The sweep block needs the study's Optuna storage, which is not in git: it is
checked only where that storage holds the study.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "RESULTS.md"


def check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args, "--check"], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("script", [
    ["scripts/run_report.py"],        # the committed default run, from metrics/*.json
    ["scripts/ablations.py", "report"],  # stage-2 ablations, from metrics/ablations.json and the default run
    ["scripts/paper_memory.py"],      # the paper profile's memory per GPU, from the architecture cards
], ids=["run", "ablations", "paper-memory"])
def test_results_block_is_what_its_script_writes(script):
    r = check(*script)
    assert r.returncode == 0, r.stderr


def test_sweep_block_is_what_sweep_report_writes():
    study = re.search(r"Study `([^`]+)`", RESULTS.read_text().split("<!-- sweep:start", 1)[1]).group(1)
    if not (ROOT / "mlruns" / "optuna.db").is_file():
        pytest.skip(f"study {study!r} lives in mlruns/optuna.db of the machine that ran it (not in git)")
    r = check("scripts/sweep_report.py", "--study", study)
    if r.returncode == 2 and "no study" in r.stderr:
        pytest.skip(r.stderr.strip())
    assert r.returncode == 0, r.stderr


def test_every_block_in_results_names_a_script_that_exists():
    text = RESULTS.read_text()
    starts = re.findall(r"<!-- (\S+):start \((scripts/\S+)[^)]*\) -->", text)
    assert {name for name, _ in starts} == {"run", "ablations", "paper-memory", "sweep"}
    for name, script in starts:
        assert (ROOT / script).is_file(), script
        assert text.count(f"<!-- {name}:end -->") == 1, name


def test_a_stale_block_fails_with_the_command_that_rewrites_it(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import doc_block
    finally:
        sys.path.pop(0)
    target = tmp_path / "R.md"
    target.write_text("head\n<!-- x:start (s) -->\n\nold\n\n<!-- x:end -->\ntail\n")
    assert doc_block.write("<!-- x:start (s) -->", "<!-- x:end -->", "new", True, "x", "block", "python s.py", target) == 1
    assert "old" in target.read_text()  # --check writes nothing
    assert doc_block.write("<!-- x:start (s) -->", "<!-- x:end -->", "new", False, "x", "block", "python s.py", target) == 0
    assert target.read_text() == "head\n<!-- x:start (s) -->\n\nnew\n\n<!-- x:end -->\ntail\n"
    assert doc_block.write("<!-- y:start -->", "<!-- y:end -->", "new", True, "x", "block", "", target) == 2
