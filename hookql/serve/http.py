"""The HTTP listener: /metrics (Prometheus text, or OpenMetrics when the scraper asks for it) and /healthz.

Nothing else is served.  Each request has 10 s to arrive whole (in all, not per read: a client that
trickles a byte at a time is dropped too); a malformed one gets wsgiref's 400 and is not logged (a request
line is text from the network), nor is a client that times out or goes away.  At most MAX_CLIENTS
connections are handled at once (each is a thread and a descriptor): past that, the one that has waited
longest for its request to arrive is dropped, so a local user opening connections cannot run the service
out of descriptors or threads.  The listener binds before anything attaches, so a port in use stops the
start with nothing loaded.
"""
from __future__ import annotations

import io
import socket
import threading
import time
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


MAX_CLIENTS = 64  # connections handled at once
REQUEST_SECONDS = 10  # for a request to arrive whole


class _DeadlineReader(io.RawIOBase):
    """The connection's bytes, each read waiting only for what is left of the request's time."""

    def __init__(self, sock, deadline: float):
        self.sock, self.deadline = sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive in time")
        self.sock.settimeout(left)
        return self.sock.recv_into(b)


class _Handler(WSGIRequestHandler):
    timeout = REQUEST_SECONDS  # a client that sends nothing (or half a request, however slowly) is dropped

    def setup(self):
        super().setup()
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, time.monotonic() + REQUEST_SECONDS))

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self.server.arrived(self.connection)  # arrived (or refused): no longer one to drop for a newer one
        self.connection.settimeout(REQUEST_SECONDS)  # the answer's own time to go out
        return ok

    def handle(self):
        try:
            super().handle()
        except OSError:  # timed out, reset, or dropped for a newer client: nothing to say to it
            pass

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


def _server_class(host: str):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = family
        allow_reuse_address = True
        request_queue_size = 128

        def server_activate(self):
            self.slots = threading.BoundedSemaphore(MAX_CLIENTS)
            self.waiting: dict = {}  # connections whose request has not arrived yet, oldest first
            self.waiting_lock = threading.Lock()
            super().server_activate()

        def process_request(self, request, client_address):
            while not self.slots.acquire(blocking=False):
                with self.waiting_lock:  # full: drop the client that has waited longest for its request
                    oldest = next(iter(self.waiting), None)
                    self.waiting.pop(oldest, None)
                if oldest is not None:
                    try:
                        oldest.shutdown(socket.SHUT_RDWR)  # its thread's read ends; its slot frees
                    except OSError:
                        pass
                if self.slots.acquire(timeout=0.05):
                    break
            with self.waiting_lock:
                self.waiting[request] = None
            try:
                super().process_request(request, client_address)
            except BaseException:
                self.arrived(request)
                self.slots.release()
                self.shutdown_request(request)
                raise

        def process_request_thread(self, request, client_address):
            try:
                super().process_request_thread(request, client_address)
            finally:
                self.arrived(request)
                self.slots.release()

        def arrived(self, request) -> None:
            with self.waiting_lock:
                self.waiting.pop(request, None)

        def handle_error(self, request, client_address):
            import sys

            if not isinstance(sys.exc_info()[1], OSError):  # a client gone or slow is not an error
                super().handle_error(request, client_address)

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
            return [b"" if environ["REQUEST_METHOD"] == "HEAD" else body]
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
