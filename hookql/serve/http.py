"""The HTTP listener: /metrics (Prometheus text, or OpenMetrics when the scraper asks for it) and /healthz.

Nothing else is served.  Each request has 10 s to arrive whole; a malformed one gets wsgiref's 400 and
is not logged (a request line is text from the network).  The listener binds before anything attaches,
so a port in use stops the start with nothing loaded.
"""
from __future__ import annotations

import socket
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


class ListenError(Exception):
    pass


def parse_listen(text: str) -> tuple[str, int]:
    """ADDR:PORT, [V6ADDR]:PORT or :PORT (all addresses); a bad one raises ValueError saying why."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--listen {text!r}: give ADDR:PORT, e.g. 127.0.0.1:9437 or [::1]:9437")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"--listen {text!r}: write an IPv6 address in brackets, e.g. [::1]:9437")
    return host or "0.0.0.0", int(port)


class _Handler(WSGIRequestHandler):
    timeout = 10  # a client that sends nothing (or half a request) is dropped

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


def _server_class(host: str):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = family
        allow_reuse_address = True

    return Server


def make_app(registry, healthy):
    from prometheus_client.exposition import choose_encoder

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Content-Type", "text/plain"), ("Allow", "GET, HEAD")])
            return [b"GET /metrics or /healthz\n"]
        if path == "/healthz":
            ok, why = healthy()
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [(why + "\n").encode()]
        if path == "/metrics":
            encoder, content_type = choose_encoder(environ.get("HTTP_ACCEPT", ""))
            body = encoder(registry)
            start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
            return [body]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: GET /metrics or /healthz\n"]

    return app


class Listener:
    def __init__(self, listen: str, app):
        host, port = parse_listen(listen)
        try:
            self.server = make_server(host, port, app, server_class=_server_class(host), handler_class=_Handler)
        except OSError as exc:
            raise ListenError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
        self.thread = threading.Thread(target=self.server.serve_forever, name="hookql-http", daemon=True)

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():  # shutdown() waits for serve_forever: never call it before start()
            self.server.shutdown()
        self.server.server_close()
