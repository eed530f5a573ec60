"""The wrapper every pipelines/ stage script runs under (``@stage("name")``), ``fail`` and ``crash``.

User-facing failures (bad params, a missing folder, ...) raise ``VLVError`` and are
printed as one line on stderr with exit status 2: never a traceback. Any other exception
(a bug, a fault nobody foresaw) is one line too, exit status 1, naming a log file under the
system temp dir that holds its traceback; KeyboardInterrupt is left alone. Kept apart from the
`vlv` command (cli.py), whose subcommands import most of the package: a stage depends only
on what it runs (dvc.yaml's deps, checked against the imports by tests/test_dvc_stages.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import os
import sys
import tempfile
import traceback
from typing import Callable, NoReturn

from . import config, tracking
from .errors import VLVError


def fail(message: str) -> NoReturn:
    print(f"error: {' '.join(message.splitlines())}", file=sys.stderr)
    raise SystemExit(2)


def crash(what: str, err: BaseException) -> NoReturn:
    """An unexpected exception: its traceback to a log file, one line on stderr, exit 1."""
    summary = f"{type(err).__name__}: {' '.join(str(err).split())}"[:300].rstrip(": ")
    try:
        fd, log = tempfile.mkstemp(prefix=f"vlv-{what.removeprefix('vlv ').replace(' ', '-')}-", suffix=".log")
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{dt.datetime.now().isoformat(timespec='seconds')} {what} (cwd {os.getcwd()}, argv {sys.argv})\n")
            fh.write("".join(traceback.format_exception(err)))
        where = f"the traceback is in {log}; please report it with that file"
    except OSError as log_err:
        where = (f"its traceback could not be saved in {tempfile.gettempdir()} ({log_err.strerror}); "
                 f"set TMPDIR to a writable folder and re-run")
    print(f"error: {what}: unexpected {summary}; {where}", file=sys.stderr)
    raise SystemExit(1)


def _message(name: str, err: VLVError) -> str:
    """``name: message``, the stage named once (messages from the loop already start with it)."""
    text = str(err)
    return text if text.startswith(f"{name}: ") else f"{name}: {text}"


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
                fail(_message(name, err))
            except KeyboardInterrupt:
                print(f"{name}: interrupted", file=sys.stderr)
                raise SystemExit(130) from None
            except Exception as err:
                crash(name, err)

        return main

    return wrap
