"""HookQL's on-disk caches, and what makes them safe to use as root.

dirs.py   where the cache lives (XDG), created 0700, and the ownership and
          mode checks every directory on its path must pass before use;
blobs.py  entries that carry the sha256 of their content, verified before
          anything is loaded from them (a damaged one is rebuilt);
runs.py   the warm path of `hookql run` (a script run before replays its object).

Nothing is deserialized, executed or loaded from the cache unless it passed
both: the directory is the running user's alone, and the bytes are what was
written (README, "Security").
"""
