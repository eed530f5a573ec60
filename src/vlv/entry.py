"""The wrapper every pipelines/ stage script runs under (``@stage("name")``), and ``fail``.

User-facing failures (bad params, a missing folder, ...) raise ``VLVError`` and are
printed as one line on stderr with exit status 2: never a traceback. Kept apart from the
`vlv` command (cli.py), whose subcommands import most of the package: a stage depends only
on what it runs (dvc.yaml's deps, checked against the imports by tests/test_dvc_stages.py).
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Callable

from . import config, tracking
from .errors import VLVError


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def stage(name: str, main_only: bool = False) -> Callable:
    """Decorate a pipelines/ script's ``main(params)``: parse --params, validate, run.

    ``main_only``: a stage without a training loop; under ``accelerate launch`` the other
    processes exit at once and the main process does the work (and all the writing)."""

    def wrap(fn: Callable[[config.Params], None]) -> Callable[[list[str] | None], None]:
        @functools.wraps(fn)
        def main(argv: list[str] | None = None) -> None:
            ap = argparse.ArgumentParser(prog=f"pipelines/{name}.py", description=fn.__doc__)
            ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
            args = ap.parse_args(argv)
            if main_only and not tracking.is_main():
                return
            try:
                params, note = config.load_with_note(args.params)
                if note and tracking.is_main():
                    print(f"{name}: {note}", file=sys.stderr)
                fn(params)
            except VLVError as err:
                fail(f"{name}: {err}")
            except KeyboardInterrupt:
                print(f"{name}: interrupted", file=sys.stderr)
                raise SystemExit(130) from None

        return main

    return wrap
