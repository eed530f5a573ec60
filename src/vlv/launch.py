"""How dvc.yaml starts the training stages: ``python -m vlv.launch pipelines/<stage>.py``.

The launcher is a property of the machine, not of the experiment, so it is read from the
environment (``VLV_LAUNCHER``) rather than from params: changing it never re-runs a stage,
and dvc.yaml stays the same on a laptop and on a cluster. Unset, the stage runs in this
Python. Otherwise the command is split like a shell line and the stage script is put where
``{script}`` stands, or appended::

    VLV_LAUNCHER="accelerate launch --multi_gpu --num_processes 8" dvc repro
"""

from __future__ import annotations

import os
import shlex
import sys


def command(script: list[str], launcher: str | None = None) -> list[str]:
    launcher = os.environ.get("VLV_LAUNCHER", "") if launcher is None else launcher
    words = shlex.split(launcher)
    if not words:
        return [sys.executable, *script]
    if any("{script}" in w for w in words):
        return [w.replace("{script}", shlex.join(script)) for w in words]
    return [*words, *script]


def main() -> None:
    if len(sys.argv) < 2:
        print("usage: python -m vlv.launch pipelines/<stage>.py [args]  (launcher: $VLV_LAUNCHER)", file=sys.stderr)
        raise SystemExit(2)
    cmd = command(sys.argv[1:])
    if os.environ.get("VLV_LAUNCHER"):
        print(f"launch: {shlex.join(cmd)}", file=sys.stderr)
    try:
        os.execvp(cmd[0], cmd)
    except OSError as err:
        print(f"error: VLV_LAUNCHER={os.environ.get('VLV_LAUNCHER')!r}: cannot run {cmd[0]!r} ({err.strerror}); "
              f"set it to a command on PATH, e.g. 'accelerate launch --num_processes 8'", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
