"""`hookql test`'s command line."""
from __future__ import annotations

FORMAT = """case files (*.hqt) sit next to the scripts they test; one statement per line:

  test "NAME" {
      script "PATH"                  the script (default: the case file's name with .hq)
      on ... { ... }                 or the script's clauses inline (use, const, def too)
      run "CMD" [timeout 10s] [exits N|any] [stdout ~ "RE"] [stderr ~ "RE"]
      expect AGG OP N                AGG as written (count by comm), or its `as` name
      expect AGG[KEY, ...] OP N      one row; OP: == != >= <= > <
      expect AGG == {KEY: N, ...}    the whole table
      expect AGG[KEY] bucket V OP N  the histogram bucket that holds V
      expect emit "LINE" | expect emit ~ "RE" | expect emits OP N
      expect denied OP N
      golden "FILE" [mask NAME, ...] (--accept writes it)
      requires kernel >= 6.1 | requires hook kprobe:tcp_connect | requires command nc
      enforce | scope host | ordered | allow loss
  }

Workloads run with /bin/sh in the case file's directory, once everything is attached, in a cgroup of
their own: only their events count (unless `scope host`), and at the timeout all of it is killed."""


def add_to(p) -> None:
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="case files, or directories to search for *.hqt (default: the project's root, the "
                        "nearest directory up with a hookql.toml)")
    p.add_argument("-k", dest="patterns", action="append", default=[], metavar="PATTERN",
                   help="only cases whose FILE::NAME holds PATTERN (* and ? as in the shell; repeat for more)")
    p.add_argument("--accept", action="store_true",
                   help="write each case's results as its golden file (golden \"FILE\")")
    p.add_argument("--junit", metavar="FILE", help="also write the results as JUnit XML")
    p.add_argument("--kernel", metavar="VERSION",
                   help="run the cases in a VM on Debian's stock kernel (6.1), fetched and cached on first use")
    p.add_argument("--kernel-image", metavar="PATH",
                   help="run the cases in a VM on this kernel (a vmlinux with BTF, or a Debian bzImage)")
    p.add_argument("--kernel-modules", metavar="DIR",
                   help="with --kernel-image: its lib/modules directory, if virtio, 9p and overlay are modules")
    p.add_argument("--deps", action="store_true",
                   help="also run the tests of the project's locked libraries (they run as you: review them)")
    p.add_argument("-v", "--verbose", action="store_true", help="say more about each case")


def run(args) -> int:
    from hookql.testing.runner import Options, run as run_tests

    return run_tests(Options(args.paths, args.patterns, args.accept, args.junit, args.kernel, args.kernel_image,
                             args.kernel_modules, args.deps, args.verbose))
