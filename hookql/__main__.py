import sys

from hookql.cli import main

sys.exit(main())
