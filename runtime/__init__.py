"""Runtime: libbpf through ctypes, loading and attaching, the run loop, reading maps and events."""
