"""HookQL's Lark grammar (hookql.lark), shipped as package data."""
from pathlib import Path

GRAMMAR_PATH = Path(__file__).with_name("hookql.lark")
