"""`hookql serve`'s command line."""
from __future__ import annotations

from hookql import runargs

DEFAULT_LISTEN = "127.0.0.1:9437"  # not 9435: ebpf_exporter, which may run on the same node, has that

DEFAULT_SERIES_CAP = 1000
DEFAULT_DRAIN = "10s"


def _arg(conv):
    """An argparse type from one of runargs' converters (their ValueError says what is wrong)."""
    import argparse

    def typed(text: str):
        try:
            return conv(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    typed.__name__ = conv.__name__
    return typed


def series_cap(text: str) -> int:
    n = runargs._integer(text)
    if n is None or not 1 <= n <= 1_000_000:
        raise ValueError(f"'{text}' is not a series cap: give a number of label sets from 1 to 1000000")
    return n


def drain_interval(text: str) -> float:
    t = runargs.duration(text)
    if not 0.1 <= t <= 3600:
        raise ValueError(f"'{text}': the drain interval is from 100ms to 1h")
    return t


def add_to(p) -> None:
    p.add_argument("paths", nargs="+", metavar="SCRIPT|DIR", help="scripts, or directories of *.hq scripts")
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="ADDR:PORT",
                   help=f"where /metrics and /healthz listen (default {DEFAULT_LISTEN}; [::1]:PORT for IPv6)")
    p.add_argument("--enforce", action="store_true", help="let `deny` block (without it, deny only counts)")
    p.add_argument("--series-cap", type=_arg(series_cap), default=DEFAULT_SERIES_CAP, metavar="N",
                   help=f"label sets kept per metric; later ones are folded into one __overflow__ series "
                        f"(default {DEFAULT_SERIES_CAP})")
    p.add_argument("--drain-interval", type=_arg(drain_interval), default=drain_interval(DEFAULT_DRAIN),
                   metavar="DURATION", help=f"how often the kernel maps are emptied into the totals "
                                            f"(default {DEFAULT_DRAIN})")
    p.add_argument("--map-size", type=_arg(runargs.map_size), default=None, metavar="N",
                   help="entries per keyed aggregation map, state map and entry map (default 4096)")


def run(args) -> int:
    from hookql.serve.service import ServeOptions, Service

    opts = ServeOptions(args.paths, args.listen, args.enforce, args.series_cap, args.drain_interval, args.map_size)
    return Service(opts).run()
