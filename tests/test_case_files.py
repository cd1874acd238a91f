"""Case files (*.hqt) as the front end reads them: the model, and every mistake as file:line:col with a hint.
Pure: nothing is checked against a kernel, nothing runs (hookql/testing/cases.py)."""
from pathlib import Path

import pytest

from hookql.source import Source
from hookql.testing.cases import CaseError, normalise, parse


def cases(text: str, name: str = "x.hqt"):
    return parse(Source(name, text), Path("/proj") / name)


def error(text: str) -> str:
    with pytest.raises(CaseError) as info:
        cases(text)
    return info.value.diagnostic.render()


GOOD = r'''# a comment
test "counts" {
    script "sub/s.hq"   # the script
    run "python3 -c 'print(1)'" timeout 2.5s exits any stdout ~ "1"
    run "false" exits 1 stderr ~ "x|y\\[\\d\\]"
    expect count by comm == {"python3": 3, sh: 1, ("a", 2): 4}
    expect count by  comm ["python3"] >= 2
    expect hist( size ) by comm["x"] bucket 1024 == 1
    expect count at line 7 != 0
    expect emit "comm=x pid=1"
    expect emit ~ "dport=44[0-9]"
    expect emits <= 3
    expect denied == 0
    expect count by daddr, dport == {(127.0.0.1, 80): 1, ("::1", 443): 2}
    golden "s.expected" mask pid, walltime
    requires kernel >= 6.1
    requires hook kprobe:tcp_v4_connect
    requires command nc
    enforce
    scope host
    ordered
    allow loss
}

test "inline" {
    use netlib
    on tracepoint:syscalls:sys_enter_getppid where comm == "}" {
        count by comm   # a } in a comment
    }
    on tracepoint:syscalls:sys_enter_getuid < count >
    run "true"
    expect count at line 30 == 0
}
'''


def test_a_case_file_reads_into_cases():
    a, b = cases(GOOD)
    assert a.name == "counts" and a.script == Path("/proj/sub/s.hq") and a.inline is None
    w1, w2 = a.workloads
    assert (w1.command, w1.timeout, w1.exits, w1.stdout[0]) == ("python3 -c 'print(1)'", 2.5, None, "1")
    assert (w2.exits, w2.timeout, w2.stderr[0]) == (1, 10.0, "x|y\\[\\d\\]")  # other escapes: as written
    e = a.expects
    assert e[0].agg == "count by comm" and e[0].value == {("python3",): 3, ("sh",): 1, ("a", "2"): 4}
    # an aggregation is kept as written up to the comparison: what is key, line or bucket is known only against
    # the script's aggregations (plan.resolve)
    assert (e[1].agg, e[1].op, e[1].value) == ('count by  comm ["python3"]', ">=", 2)
    assert e[2].agg == 'hist( size ) by comm["x"] bucket 1024'
    assert (e[3].agg, e[3].op) == ("count at line 7", "!=")
    assert (e[4].kind, e[4].value, e[4].pattern) == ("emit", "comm=x pid=1", False)
    assert (e[5].kind, e[5].pattern) == ("emit", True)
    assert (e[6].kind, e[6].op, e[6].value) == ("emits", "<=", 3)
    assert (e[7].kind, e[7].value) == ("denied", 0)
    assert e[8].value == {("127.0.0.1", "80"): 1, ("::1", "443"): 2}
    assert a.golden[0] == Path("/proj/s.expected") and a.masks == ["pid", "walltime"]
    assert [(r.kind, r.value) for r in a.requires] == [("kernel", "6.1"), ("hook", "kprobe:tcp_v4_connect"),
                                                       ("command", "nc")]
    assert a.enforce and a.scope == "host" and a.ordered and a.allow_loss
    assert b.script is None and b.inline is not None
    # the inline script keeps its lines where they are in the case file, and nothing else
    lines = b.inline.text.split("\n")
    assert lines[25] == "    use netlib" and lines[26].startswith("    on tracepoint") and lines[28] == "    }"
    assert lines[29].endswith("< count >") and lines[30] == "" and lines[24] == ""


def test_the_default_script_is_the_case_files_name():
    (c,) = cases('test "t" {\n  run "true"\n  expect count == 1\n}\n', "dir/tcp.hqt")
    assert c.script == Path("/proj/dir/tcp.hq")


def test_aggregation_text_is_normalised():
    assert normalise("hist( x )  by comm,pid") == "hist(x) by comm, pid"
    assert normalise("lhist(x,0, 100,10) as  y") == "lhist(x, 0, 100, 10) as y"


@pytest.mark.parametrize("text, where, words", [
    ('test "t" {\n  bogus 1\n}\n', "x.hqt:2:3", "unknown statement `bogus`"),
    ('test "t" {\n  run "true\n}\n', "x.hqt:2:7", "no closing quote"),
    ('test "t" {\n  run "true"\n  expect count == 1\n', "x.hqt:1:1", "no closing `}`"),
    ('test "t" {\n  run "a\\x4z"\n}\n', "x.hqt:2:9", "\\x takes two hex digits"),
    ('test "t" {\n  run "true"\n  golden "../out"\n  expect count == 1\n}\n', "x.hqt:3:10", "no `..`"),
    ('test "t" {\n  script "/etc/x.hq"\n  run "true"\n  expect count == 1\n}\n', "x.hqt:2:10",
     "relative to the case file"),
    ('test "t" {\n  expect count == 1\n}\n', "x.hqt:1:1", "runs nothing"),
    ('test "t" {\n  run "true"\n}\n', "x.hqt:1:1", "expects nothing"),
    ('test "t" {\n  run "true"\n  expect count by comm >= {"a": 1}\n}\n', "x.hqt:3:27", "`==` alone"),
    ('test "t" {\n  run "true"\n  expect count == 1\n}\ntest "t" {\n  run "true"\n  expect count == 1\n}\n',
     "x.hqt:5:6", "two cases named"),
    ('test "t" {\n  run "true"\n  expect emit ~ "("\n}\n', "x.hqt:3:17", "not a regular expression"),
    ('test "t" {\n  run "true" timeout 0s\n  expect count == 1\n}\n', "x.hqt:2:22", "more than 0"),
    ('test "t" {\n  run "true" timeout 2h\n  expect count == 1\n}\n', "x.hqt:2:22", "not a number, a duration"),
    ('test "t" {\n  run "true"\n  expect count == many\n}\n', "x.hqt:3:19", "expected an integer"),
    ('test "t" {\n  run "true"\n  expect == 1\n}\n', "x.hqt:3:10", "expected an aggregation"),
    ('test "t" {\n  run "true"\n  expect count by comm\n}\n', "x.hqt:3:23", "expected a comparison"),
    ('test "t" {\n  run "true"\n  expect no count == 1\n}\n', "x.hqt:3:13", "`no` goes with emit"),
    ('test "t" {\n  run "true"\n  expect count ~ "x"\n}\n', "x.hqt:3:16", "~ matches emitted lines"),
    ('run "true"\n', "x.hqt:1:1", "expected `test`"),
    ('test "t" {\n  script "a.hq"\n  on tracepoint:x:y { count }\n  run "true"\n  expect count == 1\n}\n',
     "x.hqt:3:3", "names a script already"),
    ('test "t" {\n  on tracepoint:x:y { count }\n  script "a.hq"\n  run "true"\n  expect count == 1\n}\n',
     "x.hqt:3:10", "inline clauses and names a script"),
    ('test "t" {\n  run "true"\n  expect count == 1\n  requires kernel >= six\n}\n', "x.hqt:4:22", "kernel version"),
    ('test "t" {\n  run "true"\n  expect count == 1 2\n}\n', "x.hqt:3:21", "at the end of the statement"),
    ('test "t" {\n  run "true" \x1b[2J\n}\n', "x.hqt:2:14", "unexpected character"),
    ('test "t" {\n  run "printf \\0"\n}\n', "x.hqt:2:7", "cannot hold a NUL"),
    ('test "t" {\n  run "true"\n  golden "x.hq"\n}\n', "x.hqt:3:10", "not a script or cases"),
    ('test "t" {\n  run "true"\n  expect count by comm == {"a": 1, "a": 2}\n}\n', "x.hqt:3:36", "twice"),
])
def test_each_mistake_names_file_line_col(text, where, words):
    msg = error(text)
    assert msg.startswith(where + ": error:"), msg
    assert words in msg, msg
    assert "\x1b" not in msg  # a control character in the file never reaches the terminal raw


# -- an aggregation named in a case, against the script's (plan.resolve) --------------------------------------
LAYOUT = {"aggregations": [
    {"map": "a0", "text": "count by comm", "name": None, "line": 2, "func": "count", "by": [{"name": "comm"}]},
    {"map": "a1", "text": "count by who[skaddr].comm", "name": None, "line": 3, "func": "count",
     "by": [{"name": "who[skaddr].comm"}]},
    {"map": "a2", "text": "hist(ts - born[skaddr]) as life", "name": "life", "line": 4, "func": "hist", "by": []},
    {"map": "a3", "text": "count", "name": None, "line": 5, "func": "count", "by": []},
    {"map": "a4", "text": "count", "name": None, "line": 6, "func": "count", "by": []},
    {"map": "a5", "text": "sum(x) by a, b", "name": None, "line": 7, "func": "sum", "by": [{"name": "a"}, {"name": "b"}]},
]}


def resolved(line: str):
    from hookql.testing.plan import resolve

    (c,) = cases(f'test "t" {{\n  run "true"\n  {line}\n}}\n')
    e = c.expects[0]
    a = resolve(e, LAYOUT)
    return a["map"], e.key, e.bucket


def resolve_error(line: str) -> str:
    with pytest.raises(CaseError) as info:
        resolved(line)
    return info.value.diagnostic.render()


def test_an_aggregation_is_found_as_the_script_writes_it():
    assert resolved('expect count by comm["curl"] == 1') == ("a0", ("curl",), None)
    assert resolved('expect count  by comm == {}') == ("a0", None, None)
    assert resolved('expect count by who[skaddr].comm["sshd"] >= 1') == ("a1", ("sshd",), None)
    assert resolved('expect count by who[ skaddr ].comm == {"x": 1}') == ("a1", None, None)
    assert resolved("expect hist(ts - born[skaddr]) bucket 100 >= 1") == ("a2", None, 100)
    assert resolved("expect life bucket 100 >= 1") == ("a2", None, 100)
    assert resolved("expect hist(ts - born[skaddr]) as life bucket 0 == 0") == ("a2", None, 0)
    assert resolved("expect count at line 6 == 2") == ("a4", None, None)
    assert resolved('expect sum(x) by a, b[*, "y"] > 0') == ("a5", ("*", "y"), None)


def test_an_aggregation_the_script_does_not_have_or_has_twice():
    msg = resolve_error("expect sum(y) == 1")
    assert msg.startswith("x.hqt:3:10: error: the script has no aggregation `sum(y)`"), msg
    assert "`count by who[skaddr].comm` (line 3)" in msg
    msg = resolve_error("expect count == 1")
    assert msg.startswith("x.hqt:3:10: error: the script has more than one `count` (lines 5, 6)"), msg
    assert "at line N" in msg
    msg = resolve_error("expect count at line 9 == 1")
    assert "no `count` on line 9" in msg
    msg = resolve_error('expect count by comm["a" == 1')
    assert msg.startswith("x.hqt:3:23: error: this `[` is not closed"), msg
