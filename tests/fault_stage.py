"""A stage script for tests/test_faults.py: runs under vlv.entry.stage("toy") like pipelines/*.py.

VLV_TOY_MODE picks what main does: "train" (tests/loop_toy.py's loop into $VLV_TOY_CKPT),
"bug" (an exception nobody foresaw) or "interrupt" (Ctrl-C)."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loop_toy  # noqa: E402

from vlv.entry import stage  # noqa: E402
from vlv.train import train  # noqa: E402


@stage("toy")
def main(params) -> None:
    mode = os.environ["VLV_TOY_MODE"]
    if mode == "train":
        train(loop_toy.Regressor(), loop_toy.Points(), loop_toy.spec(), os.environ["VLV_TOY_CKPT"], "toy-v1", progress=False)
    elif mode == "bug":
        {}["no such key"]
    elif mode == "interrupt":
        raise KeyboardInterrupt


if __name__ == "__main__":
    main()
