"""`python -m hookql`: the same as the `hookql` command (bin/hookql), Ctrl-C included."""
import sys

try:
    from hookql.cli import main

    code = main()
except KeyboardInterrupt:
    code = 130
sys.exit(code)
