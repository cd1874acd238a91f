"""`hookql` (bin/hookql runs `python3 -I -m hookql`) and `python -m hookql`.

Signals are handled from the first line on, before anything slow is imported:
Ctrl-C at any moment ends the command quietly with 130 (KeyboardInterrupt is
caught here and in cli.main), SIGTERM with 143 (SystemExit, so `with` blocks and
`finally` clean up; `hookql run` replaces both once it has started loading).
`_signal` rather than `signal`: that module's import (enum) is a tenth of a warm start.
A Ctrl-C before this line runs is Python's own: the interpreter is still
importing `site` (and whatever .pth files the installation carries)."""
import _signal
import sys


def _terminated(signum, frame):
    raise SystemExit(128 + signum)


if _signal.getsignal(_signal.SIGTERM) == _signal.SIG_DFL:  # an inherited SIG_IGN stays
    _signal.signal(_signal.SIGTERM, _terminated)
try:
    from hookql.cli import main

    code = main()
except KeyboardInterrupt:
    code = 130
sys.exit(code)
