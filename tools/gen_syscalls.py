"""Write hookql/data/syscalls.json: each syscall tracepoint's arguments (type, name), from
tracefs of the running kernel (run as root).  Offline checks name syscall tracepoint fields
from it where the kernel's BTF has no __do_sys_X/__se_sys_X prototype (most are inlined)."""
import json
import os
import platform
import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "hookql" / "data" / "syscalls.json"
FIELD = re.compile(r"field:(?P<decl>[^;]+);\s*offset:(?P<off>\d+)")


def main() -> int:
    base = Path(os.environ.get("HOOKQL_TRACEFS", "/sys/kernel/tracing")) / "events" / "syscalls"
    table = {}
    for d in sorted(base.glob("sys_enter_*")):
        args = []
        for m in FIELD.finditer((d / "format").read_text()):
            decl = m["decl"].strip()
            dm = re.match(r"^(?P<type>.*?)\s*(?P<name>[A-Za-z_]\w*)$", decl)
            if int(m["off"]) >= 16 and dm:
                args.append([dm["type"], dm["name"]])
        table[d.name.removeprefix("sys_enter_")] = args
    data = {"kernel": f"{platform.release()} {platform.machine()}", "syscalls": table}
    OUT.write_text(json.dumps(data, separators=(",", ":"), sort_keys=True) + "\n")
    print(f"wrote {OUT}: {len(table)} syscalls", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
