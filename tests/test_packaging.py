"""Installed, HookQL is one import namespace: hookql, hookql.grammar,
hookql.codegen, hookql.runtime; no top-level runtime/codegen/grammar."""
import subprocess
import sys
import venv

import pytest

from conftest import REPO

PROBE = """
import importlib.util, json, os, hookql, hookql.codegen, hookql.runtime, hookql.grammar
from importlib import resources
print(json.dumps({
    "stray": [m for m in ("codegen", "runtime", "grammar", "tools", "tests") if importlib.util.find_spec(m)],
    "grammar": os.path.isfile(hookql.grammar.GRAMMAR_PATH),
    "catalog": (resources.files("hookql") / "data" / "catalog.json").is_file(),
    "btf": sorted(p.name for p in (resources.files("hookql") / "data" / "btf").iterdir()),
    "codegen": hookql.codegen.__file__,
    "event_printer": (resources.files("hookql.runtime") / "events.c").is_file(),
}))
"""


def _install(tmp_path, editable: bool):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    # --no-deps: only the layout is under test; the build backend comes from the index as for users
    cmd = [str(py), "-m", "pip", "install", "-q", "--no-deps"]
    cmd += ["-e", str(REPO)] if editable else [str(REPO)]
    subprocess.run(cmd, check=True, cwd=tmp_path, capture_output=True, timeout=300)
    out = subprocess.run([str(py), "-c", PROBE], check=True, cwd=tmp_path, capture_output=True, text=True)
    import json
    site = next((env_dir / "lib").glob("python*/site-packages"))
    version = subprocess.run([str(env_dir / "bin" / "hookql"), "--version"], capture_output=True, text=True)
    info = json.loads(out.stdout)
    info["command"] = version.stdout.strip()
    return info, sorted(p.name for p in site.iterdir())


@pytest.mark.parametrize("editable", [False, True], ids=["install", "editable"])
def test_one_namespace(tmp_path, editable):
    info, site = _install(tmp_path, editable)
    assert info["stray"] == []
    assert info["grammar"] and info["catalog"] and info["btf"] == ["6.1.btf.xz", "6.18.btf.xz"]
    assert info["event_printer"]  # runtime/events.c is built on first use
    assert info["command"].startswith("hookql ")  # bin/hookql, installed with its shebang on the venv's Python
    for top in ("codegen", "runtime", "grammar", "tools", "tests", "examples"):
        assert top not in site
    if editable:
        assert info["codegen"] == str(REPO / "codegen" / "__init__.py")
    else:
        assert "site-packages/hookql/codegen/" in info["codegen"]
