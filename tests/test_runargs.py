"""The warm path's own reading of `hookql run` options agrees with argparse's
wherever it answers, and leaves everything else to argparse."""
import pytest
from hypothesis import given, strategies as st

from hookql import cli, runargs


def argparse_reading(argv):
    ns = cli._parser().parse_args(["run", *argv])
    values = vars(ns)
    values.pop("func")
    return values


AGREE = [
    [], ["x.hq"], ["-e", "on a:b { count }"], ["-d", "10s", "x.hq"], ["-d10s", "x.hq"], ["--duration=1.5m", "-"],
    ["x.hq", "--format", "json", "-v"], ["--format=json", "--enforce", "-p", "42", "-c", "sleep 1", "x.hq"],
    ["--map-size", "8", "--ringbuf-size", "4096", "--every", "500ms", "-e", "s"], ["-d", "1", "-d", "2s", "f"],
    ["--map-size=268435456", "--ringbuf-size=2147483648", "-p", "4194304", "f"], ["-p1", "--map-size", "1", "f"],
    ["--every", "1s", "--interval", "--top", "10", "f"], ["--top=3", "--emit-format", "columns", "-e", "s"],
    ["--emit-format=kv", "--interval", "f"], ["--top", "268435456", "--format", "json", "f"],
]
ARGPARSE_ONLY = [
    ["-h"], ["--help"], ["--dur", "1s"], ["-d", "soon"], ["--format", "xml"], ["-p", "x"], ["-vd", "1s"],
    ["-d=1s"], ["--enforce=1"], ["a", "b"], ["-e"], ["--", "x.hq"], ["-e", "-x"], ["--nope"],
    ["-p", "-5"], ["-p", "0"], ["-p", "4194305"], ["--map-size", "0"], ["--map-size", "268435457"],
    ["--ringbuf-size", "3"], ["--ringbuf-size", "12288"], ["--ringbuf-size", "4294967296"], ["--map-size=-1"],
    ["--top", "0"], ["--top", "x"], ["--top", "268435457"], ["--top"], ["--interval=1"], ["--emit-format", "csv"],
    ["--emit-format"], ["--inter"], ["--emit", "kv"],
]


@pytest.mark.parametrize("argv", AGREE, ids=" ".join)
def test_common_spellings_read_as_argparse_reads_them(argv):
    fast = runargs.parse(argv)
    assert fast is not None and vars(fast) == argparse_reading(argv)


@pytest.mark.parametrize("argv", ARGPARSE_ONLY, ids=" ".join)
def test_anything_else_is_left_to_argparse(argv):
    assert runargs.parse(argv) is None


TOKENS = st.sampled_from(["-e", "-d", "-c", "-p", "-v", "--verbose", "--every", "--format", "--enforce", "--map-size",
                          "--ringbuf-size", "--duration", "x.hq", "-", "10s", "1.5", "ms", "json", "text", "7", "-1",
                          "--format=json", "-d2m", "--every=1h", "0x10", "--", "-x", "--dur", "0", "3", "4096",
                          "12288", "268435457", "2147483648", "4294967296", "-5", "--map-size=0", "-p0",
                          "--interval", "--top", "--top=2", "--emit-format", "columns", "kv", "--emit-format=columns",
                          "--top=0"])


@given(st.lists(TOKENS, max_size=6))
def test_whenever_the_fast_reading_answers_argparse_agrees(argv):
    fast = runargs.parse(argv)
    if fast is None:
        return
    try:
        expected = argparse_reading(argv)
    except SystemExit:
        pytest.fail(f"argparse rejects {argv} but the fast reading accepted it as {vars(fast)}")
    assert vars(fast) == expected


@pytest.mark.parametrize("text,seconds", [("10s", 10), ("500ms", 0.5), ("2m", 120), ("1.5h", 5400), ("3", 3),
                                          ("250us", 250e-6), ("7ns", 7e-9), (" 1s ", 1)])
def test_durations(text, seconds):
    assert runargs.duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "1.s", ".5s", "1e3s", "-1s", "1 s", "1sec", "١s"])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="is not a duration"):
        runargs.duration(text)


@pytest.mark.parametrize("argv", [["-p", "-5"], ["-p", "0"], ["--map-size", "0"], ["--ringbuf-size", "3"],
                                  ["--top", "0"],
                                  ["--ringbuf-size", "4294967296"], ["--map-size", "268435457"]], ids=" ".join)
def test_out_of_range_values_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        argparse_reading(argv)
    assert exc.value.code == 2
    assert f"error: argument {argv[0]}: '{argv[1]}' is not a" in capsys.readouterr().err
