"""Run the script generator of tests/test_generated.py for a long time:

    python3 tools/gen_scripts.py --long 10000 [--seed S] [--out DIR] [--no-load]

Each script is checked, built with clang and (as root) loaded in the verifier;
prints "N generated, C checked, B built, L loaded, F failures" and saves each
failure's script and what went wrong under DIR (default gen-failures/).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_generated import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
