"""HookQL's Lark grammar (hookql.lark), shipped as package data."""
import os

# a str, not a Path: `hookql run` imports this package to stamp its cache, and pathlib pulls in `re`
GRAMMAR_PATH = os.path.join(os.path.dirname(__file__), "hookql.lark")
