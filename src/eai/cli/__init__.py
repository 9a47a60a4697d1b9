"""The `eai` command line (eai.cli.main). `main()` as the program (the console script, `python -m eai.cli`) ends the
process as soon as the command is done; `main(argv)` (tests, scripts) returns the exit code."""
from __future__ import annotations

import importlib
import os
import sys

_cli = importlib.import_module("eai.cli.main")  # the parser and the one-line errors

__all__ = ["main"]
# commands after which the process may end without Python's teardown: nothing is left to write or release
# (train, bench and serve may hold Accelerate's process groups, servers or atexit duties: they exit normally)
FAST_EXIT = {"info", "convert", "pose", "features", "data", "explain", "evaluate", "synth", "derive", "baseline"}


def main(argv: list[str] | None = None) -> int:
    """Run one command line (`argv`, default sys.argv[1:]) and return its exit code. Called as the program
    (no `argv`), after a command of FAST_EXIT the process ends at once (os._exit, output flushed): unloading torch
    and transformers module by module takes Python about 0.8 s, longer than most of the command."""
    rc = _cli.main(argv)
    if argv is None and _cli.last_command in FAST_EXIT:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (BrokenPipeError, ValueError):  # a closed pipe (eai ... | head): nothing more to say
                pass
        os._exit(rc)
    return rc
