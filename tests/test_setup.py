"""bin/setup on Debian's own python3 (externally managed, PEP 668), and when pip fails (issue 12).

Each test copies the project (the files git would check out) to a new directory
and runs the real bin/setup there, as the README's first two commands do."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEBIAN_PYTHON = Path("/usr/bin/python3")


def copy_project(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.split(b"\0")
    for f in filter(None, files):
        src = REPO / os.fsdecode(f)
        if src.is_file():
            (dest / os.fsdecode(f)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / os.fsdecode(f))
    return dest


def externally_managed(python: Path) -> bool:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
                         capture_output=True, text=True)
    return out.returncode == 0 and (Path(out.stdout.strip()) / "EXTERNALLY-MANAGED").exists()


@pytest.mark.skipif(not DEBIAN_PYTHON.exists() or not externally_managed(DEBIAN_PYTHON),
                    reason="needs Debian's own, externally managed python3")
def test_setup_works_on_debians_externally_managed_python3(tmp_path):
    proj = copy_project(tmp_path / "hookql")
    r = subprocess.run(["bin/setup"], cwd=proj, env=dict(os.environ, PYTHON=str(DEBIAN_PYTHON)),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    # the README's commands: the venv's hookql and python
    r = subprocess.run([str(proj / ".venv" / "bin" / "hookql"), "check", "--kernel", "6.18", "-e",
                        "on lsm:socket_connect { count by comm }"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ok: 1 script checked" in r.stderr, r.stderr
    r = subprocess.run([str(proj / ".venv" / "bin" / "python"), "-c", "import sys, hookql.runtime; print(sys.prefix)"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == str(proj / ".venv")


def test_setup_fails_loudly_when_pip_fails(tmp_path):
    proj = copy_project(tmp_path / "hookql")
    env = dict(os.environ, PYTHON=sys.executable, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(tmp_path / "nothing"))
    r = subprocess.run(["bin/setup"], cwd=proj, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode != 0
    assert "pip could not install HookQL" in r.stderr
