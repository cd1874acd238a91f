"""Every git command HookQL runs, and which git URLs it accepts.

A dependency's URL comes from a hookql.toml: the project's, or any library's
in the graph.  It is checked when the manifest is read (check_url), and git is
still called defensively: `--` before every URL and path, a protocol allowlist
(https, ssh, git, file; never `ext::` or `fd::`, which run commands), no
terminal prompts, no standard input.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from hookql.libs.errors import InstallError, show
from hookql.libs.semver import Version

SCHEMES = ("https", "ssh", "git", "file")
ACCEPTED = "an https://, ssh://, git:// or file:// URL, user@host:path (ssh), or an absolute path"

# protocol.allow=never refuses every transport the allowlist does not name (ext, fd, http, ...)
_PROTOCOLS = ["-c", "protocol.allow=never"] + [x for p in SCHEMES for x in ("-c", f"protocol.{p}.allow=always")]
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)", re.S)
_TRANSPORT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*::")  # git's `<transport>::<address>`
_SCP = re.compile(r"(?:([^@/:]+)@)?([^@/:]+):(.*)", re.S)  # [user@]host:path, no slash before the colon
_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def check_url(url: object) -> str | None:
    """Why git must not be given this dependency URL, or None when it may."""
    if not isinstance(url, str) or not url:
        return "is not a URL (it must be a non-empty string)"
    if url.startswith("-"):
        return "starts with '-' (git would take it for an option)"
    if _TRANSPORT.match(url):
        return "uses git's `transport::address` syntax (ext::, fd:: run commands)"
    if any(c.isspace() or not c.isprintable() for c in url):
        return "contains whitespace or control characters"
    m = _SCHEME.fullmatch(url)
    if m:
        scheme, rest = m[1].lower(), m[2]
        if scheme not in SCHEMES:
            return f"uses {scheme}://, which HookQL does not fetch from"
        authority = rest.split("/", 1)[0]
        if authority.startswith("-") or authority.rpartition("@")[2].startswith("-"):
            return "names a user or host that starts with '-'"
        return None
    if url.startswith("/"):
        return None  # a local repository, as git treats an absolute path
    m = _SCP.fullmatch(url)
    if m and len(m[2]) > 1:  # C:path is a drive letter to git, not a host
        if (m[1] or "").startswith("-") or m[2].startswith("-"):
            return "names a user or host that starts with '-'"
        return None
    return "is neither a URL nor an absolute path (a relative path would depend on the current directory)"


def check_commit(commit: object) -> bool:
    return isinstance(commit, str) and _COMMIT.fullmatch(commit) is not None


def _clean(text: str) -> str:
    """git's (and the remote's) messages, without terminal escapes."""
    return "".join(c if c.isprintable() or c in "\n\t" else "?" for c in text).strip()


# a hooks path or fsmonitor from any config git still reads would run a program as us
_NO_HOOKS = ["-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false"]
# what git may see of our environment: nothing that configures it (GIT_*, a HOME or XDG_CONFIG_HOME that
# `sudo -E` kept from a user, whose .gitconfig could set hooks, sshCommand, fsmonitor...)
_KEEP = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "SSH_AUTH_SOCK", "http_proxy", "https_proxy", "no_proxy",
         "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")


def _environment() -> dict[str, str]:
    """An allowlisted environment; HOME is the running user's own (from the password database, not
    $HOME), so root's git and ssh read root's configuration and keys, never a user's."""
    import pwd

    env = {k: os.environ[k] for k in _KEEP if k in os.environ}
    try:
        env["HOME"] = pwd.getpwuid(os.geteuid()).pw_dir
    except KeyError:
        env["HOME"] = "/nonexistent"
    env.update(GIT_TERMINAL_PROMPT="0", GIT_ALLOW_PROTOCOL=":".join(SCHEMES))
    return env


def run(*args: str, cwd: str | Path | None = None) -> str:
    """git ARGS; without cwd, in / so that no repository around the project (its .git/config could set
    core.sshCommand) takes part."""
    try:
        r = subprocess.run(["git", *_PROTOCOLS, *_NO_HOOKS, *args], cwd=cwd or "/", env=_environment(),
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace")
    except OSError as exc:
        raise InstallError(f"cannot run git: {exc.strerror}; install git") from None
    if r.returncode != 0:
        raise InstallError(f"git {' '.join(a for a in args[:2] if a != '--')}: {_clean(r.stderr) or 'failed'}")
    return r.stdout


def tags(url: str) -> dict[Version, str]:
    """Version -> commit, from the repo's vX.Y.Z tags (annotated tags peeled)."""
    why = check_url(url)
    if why:
        raise InstallError(f"git URL '{show(url)}' {why}")
    out: dict[Version, str] = {}
    for line in run("ls-remote", "--tags", "--", url).splitlines():
        sha, _, ref = line.partition("\t")
        if not check_commit(sha) or not ref.startswith("refs/tags/"):
            continue
        name = ref.removeprefix("refs/tags/")
        peeled = name.endswith("^{}")
        try:
            v = Version.parse(name.removesuffix("^{}"))
        except ValueError:
            continue
        if peeled or v not in out:
            out[v] = sha
    return out


def clone(url: str, commit: str, work: str) -> None:
    """The tree of `commit` from `url`, checked out in the new directory `work`."""
    why = check_url(url)
    if why:
        raise InstallError(f"git URL '{show(url)}' {why}")
    if not check_commit(commit):
        raise InstallError(f"'{show(commit)}' is not a commit id")
    # --no-local: a local path goes through git's transport too, not a copy of its .git
    run("clone", "-q", "--no-local", "--no-checkout", "--template=", "--", url, work)
    run("checkout", "-q", "--detach", commit, "--", cwd=work)
