#!/usr/bin/env python3
"""Generate HookQL's hook catalog and reference kernel BTF from the seeds.

    python tools/gen_catalog.py [--seeds ../shared/seeds] [--reference ../shared/reference]

Writes, under hookql/data/:
  catalog.json      every seed entry (descriptions, Korean line, use case,
                    source file, documented arguments), the kernel name it
                    maps to, and a suggestion where the kernel lacks it;
  btf/6.1.btf.xz    BTF of Debian 12's stock kernel (linux-image-amd64),
  btf/6.18.btf.xz   BTF of this machine's kernel (/sys/kernel/btf/vmlinux),
so `hookql check --kernel 6.1` works offline.  The seeds are documentation,
not truth: signatures always come from BTF at check time.
"""
from __future__ import annotations

import argparse
import json
import lzma
import os
import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

from hookql.btf import Btf  # noqa: E402
from hookql.testing.kernel_image import debian_kernel, default_image_package  # noqa: E402

DATA = REPO / "hookql" / "data"

_FIELD = re.compile(r"^\*\*(?P<key>[A-Za-z ]+)\*\*:\s*(?P<val>.*)$")
_ARG = re.compile(r"^-\s+`(?P<decl>[^`]+)`")


def parse_seed_file(path: Path) -> list[dict]:
    """Parse one seed markdown file into entries, in file order."""
    text = path.read_text()
    # The title line says which kind of hook the file documents.
    kind = "lsm" if "lsm" in text.splitlines()[0].lower() else "kprobe"
    entries: list[dict] = []
    cur: dict | None = None
    section = None
    for line in text.splitlines():
        line = line.rstrip()
        if line.startswith("### "):
            cur = {"seed_file": path.name, "seed_name": line[4:].strip(), "provider": kind,
                   "title": "", "description_ko": "", "use_case": "", "source": "",
                   "seed_args": [], "returns": []}
            entries.append(cur)
            section = None
            continue
        if cur is None or not line.strip() or line.strip() == "---":
            continue
        m = _FIELD.match(line)
        if m:
            key, val = m["key"].lower(), m["val"].strip().strip("`")
            section = key
            if key == "use case":
                cur["use_case"] = val
            elif key == "library":
                cur["source"] = val
            continue
        if line.startswith("> "):
            cur["title"] = line[2:].strip()
        elif section == "arguments" and _ARG.match(line):
            cur["seed_args"].append(split_decl(_ARG.match(line)["decl"]))
        elif section == "return value" and line.startswith("- "):
            cur["returns"].append(line[2:].strip())
        elif section is None and not cur["description_ko"]:
            cur["description_ko"] = line.strip()
    return entries


def split_decl(decl: str) -> list[str]:
    """'struct sock *sk' -> ['struct sock *', 'sk']."""
    m = re.match(r"^(?P<type>.*?[\s*])(?P<name>[A-Za-z_][A-Za-z0-9_]*)$", decl.strip())
    if not m:
        return [decl.strip(), ""]
    return [re.sub(r"\s+\*", " *", m["type"].strip()).replace("* ", "*").strip(), m["name"]]


def kernel_name(entry: dict, ref: dict | None) -> str:
    if ref and ref.get("kernel_name"):
        return ref["kernel_name"]
    name = entry["seed_name"]
    return name.removeprefix("security_") if entry["provider"] == "lsm" else name


def exists(btf: Btf, provider: str, name: str) -> bool:
    return btf.func(f"bpf_lsm_{name}" if provider == "lsm" else name) is not None


def suggestion(entry: dict, ref: dict | None, btfs: dict[str, Btf]) -> str | None:
    """Closest real function for a seed hook no reference kernel has."""
    if ref and ref.get("closest_real"):
        return ref["closest_real"]["name"]
    name = entry["hook"]
    for btf in btfs.values():
        for cand in (f"__{name}", f"{name}_common"):
            if exists(btf, entry["provider"], cand):
                return cand
    return None


def caveat(entry: dict, ref: dict | None) -> dict | None:
    """Kernel functions with no traceable out-of-line body (inline wrappers):
    a probe may not attach, or sees only a few callers."""
    if not ref or entry["provider"] != "kprobe" or ref.get("ftrace_6_1") is not False:
        return None
    use = re.search(r"use (\w+)", ref.get("notes", ""))
    return {"why": f"{entry['hook']} is an inline wrapper in the kernel: its only out-of-line copy is local "
                   "and not traceable, so a probe may fail to attach or see only a few calls",
            "use": use[1] if use else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=Path, default=REPO.parent / "shared" / "seeds")
    ap.add_argument("--reference", type=Path, default=REPO.parent / "shared" / "reference")
    ap.add_argument("--image-package", default=None, help="Debian package of the 6.1 kernel")
    ap.add_argument("--running-btf", type=Path, default=Path("/sys/kernel/btf/vmlinux"))
    args = ap.parse_args()

    refs = {}
    ref_path = args.reference / "seed-hooks-vs-btf.json"
    if ref_path.exists():
        refs = {(r["seed_file"], r["seed_name"]): r for r in json.loads(ref_path.read_text())}

    pkg = args.image_package or default_image_package()
    vmlinux61, release61 = debian_kernel(pkg, Path(tempfile.mkdtemp(prefix="hookql-kernel-")))  # private, not a shared name
    btfs = {"6.1": Btf.from_file(vmlinux61), "6.18": Btf.from_file(args.running_btf)}
    releases = {"6.1": f"{release61} ({pkg})", "6.18": os.uname().release}
    if not os.uname().release.startswith("6.18"):
        print(f"warning: running kernel is {os.uname().release}, not 6.18", file=sys.stderr)

    entries = []
    for path in sorted(args.seeds.glob("*.txt")):
        for e in parse_seed_file(path):
            ref = refs.get((e["seed_file"], e["seed_name"]))
            e["hook"] = kernel_name(e, ref)
            e["actual_source"] = (ref or {}).get("actual_source")
            e["in_kernels"] = [k for k, b in btfs.items() if exists(b, e["provider"], e["hook"])]
            e["suggest"] = None if e["in_kernels"] else suggestion(e, ref, btfs)
            e["caveat"] = caveat(e, ref)
            entries.append(e)

    (DATA / "btf").mkdir(parents=True, exist_ok=True)
    for ver, btf in btfs.items():
        (DATA / "btf" / f"{ver}.btf.xz").write_bytes(lzma.compress(btf.raw_data(), preset=9 | lzma.PRESET_EXTREME))
    catalog = {
        "generated_by": "tools/gen_catalog.py",
        "kernels": releases,
        "entries": entries,
    }
    (DATA / "catalog.json").write_text(json.dumps(catalog, indent=1, ensure_ascii=False) + "\n")
    n_k = sum(e["provider"] == "kprobe" for e in entries)
    hooks = {(e["provider"], e["hook"]) for e in entries}
    print(f"{len(entries)} seed entries ({n_k} kprobes, {len(entries) - n_k} LSM), {len(hooks)} hooks; "
          f"missing everywhere: {[e['seed_name'] for e in entries if not e['in_kernels']]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
