"""What `hookql test` prints (one line per case, the failures under it, a summary) and its JUnit XML.

Everything a case file, a script, a workload or the kernel wrote is escaped before it reaches the
terminal (runtime/escape.py) or the XML (control characters are not allowed in XML 1.0 at all).
"""
from __future__ import annotations

import os
import stat
import sys
import xml.etree.ElementTree as ET

from hookql.runtime.escape import escape_text
from hookql.testing.plan import Outcome

LABEL = {"pass": "PASS ", "fail": "FAIL ", "skip": "SKIP ", "error": "ERROR"}
COLOR = {"pass": "32", "fail": "31", "skip": "33", "error": "31"}


def _shown(text: str) -> str:
    return escape_text(text, backslash=False)


class Console:
    def __init__(self, out=None):
        self.out = out or sys.stdout
        self.color = hasattr(self.out, "isatty") and self.out.isatty()

    def line(self, o: Outcome) -> None:
        label = LABEL[o.status]
        if self.color:
            label = f"\x1b[{COLOR[o.status]}m{label}\x1b[0m"
        name = f"{_shown(str(o.file))}: {_shown(o.name)}" if o.name != "<file>" else _shown(str(o.file))
        took = f"  ({o.seconds:.2f}s)" if o.status in ("pass", "fail") else ""
        why = f"  [{_shown(o.details[0])}]" if o.status == "skip" and o.details else ""
        note = f"  ({_shown(o.note)})" if o.note else ""
        self.out.write(f"{label} {name}{took}{why}{note}\n")
        if o.status in ("fail", "error"):
            for d in o.details:  # already escaped where they were made (diagnostics, expect.py)
                self.out.write("".join(f"    {l}\n" for l in d.split("\n")))
        self.out.flush()

    def summary(self, outcomes: list[Outcome], seconds: float, where: str) -> None:
        n = {s: sum(o.status == s for o in outcomes) for s in LABEL}
        parts = [f"{n['pass']} passed"] + [f"{n[s]} {w}" for s, w in (("fail", "failed"), ("error", "errors"),
                                                                     ("skip", "skipped")) if n[s]]
        self.out.write(f"{', '.join(parts)} in {seconds:.1f}s ({_shown(where)})\n")
        self.out.flush()


def _xml_text(text: str) -> str:
    """Text XML 1.0 can hold: control characters (but tab and newline) escaped as \\xHH."""
    return "".join(ch if ch in "\t\n" or (ord(ch) >= 0x20 and ord(ch) not in range(0x7F, 0xA0)
                                         and not 0xD800 <= ord(ch) <= 0xDFFF and ch not in "\ufffe\uffff")
                   else f"\\x{ord(ch):02x}" for ch in text)


def junit(outcomes: list[Outcome], seconds: float, path: str) -> None:
    """JUnit XML, as CI systems read it: one testcase per case, classname the case file."""
    n = {s: sum(o.status == s for o in outcomes) for s in LABEL}
    root = ET.Element("testsuites")
    suite = ET.SubElement(root, "testsuite", name="hookql test", tests=str(len(outcomes)), failures=str(n["fail"]),
                          errors=str(n["error"]), skipped=str(n["skip"]), time=f"{seconds:.3f}")
    for o in outcomes:
        tc = ET.SubElement(suite, "testcase", classname=_xml_text(str(o.file)), name=_xml_text(o.name),
                           time=f"{o.seconds:.3f}")
        body = _xml_text("\n".join(o.details))
        first = body.split("\n", 1)[0][:300]
        if o.status == "fail":
            ET.SubElement(tc, "failure", message=first).text = body
        elif o.status == "error":
            ET.SubElement(tc, "error", message=first).text = body
        elif o.status == "skip":
            ET.SubElement(tc, "skipped", message=first)
    data = ET.tostring(root, encoding="unicode", xml_declaration=False)
    # never through a symbolic link someone left at that name, into a FIFO or device, or into another's file
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY, 0o644)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid not in (0, os.geteuid()):
        os.close(fd)
        raise OSError(1, "not a regular file of yours")
    os.ftruncate(fd, 0)
    with open(fd, "w", encoding="utf-8") as f:
        f.write('<?xml version="1.0" encoding="UTF-8"?>\n' + data + "\n")
