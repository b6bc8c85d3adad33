"""A tiny URL shortener for local development and tests (standard library only).

Protocol, the one :class:`~stripe_crm_pipelines.resources.shortener.ShortenerResource` speaks:

* ``POST /`` with ``{"url": "https://…"}`` → ``201 {"short_url": "http://host:port/<code>",
  "code": "<code>", "url": "https://…"}``; the same URL always gets the same code.
* ``GET /<code>`` → ``302`` redirect to the long URL (``404`` for an unknown code).
* ``GET /`` → ``{"links": <count>}``; ``GET /health`` → ``{"status": "ok"}``.

Links live in memory and are gone when the process stops. Run it with
``python -m stripe_crm_pipelines.local.shortener --port 8765`` and point ``SHORTENER_URL`` at it,
or start one in a thread from Python with :func:`start_local_shortener`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

_ALPHABET = "0123456789abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ"
_CODE_LENGTH = 8
_MAX_BODY_BYTES = 64 * 1024


def short_code(url: str) -> str:
    """A stable code for ``url``: base-58 digits of its SHA-256."""
    number = int.from_bytes(hashlib.sha256(url.encode()).digest()[:8], "big")
    digits = []
    for _ in range(_CODE_LENGTH):
        number, digit = divmod(number, len(_ALPHABET))
        digits.append(_ALPHABET[digit])
    return "".join(digits)


class LocalShortener:
    """An in-memory shortener served over HTTP; use as a context manager or call ``stop()``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, quiet: bool = True):
        self.links: dict[str, str] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), _handler_for(self, quiet=quiet))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def shorten(self, long_url: str) -> str:
        code = short_code(long_url)
        with self._lock:
            self.links[code] = long_url
        return f"{self.url}/{code}"

    def resolve(self, code: str) -> str | None:
        with self._lock:
            return self.links.get(code)

    def link_count(self) -> int:
        with self._lock:
            return len(self.links)

    def start(self) -> LocalShortener:
        """Serve in a daemon thread and return at once."""
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="local-shortener",
            daemon=True,
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        """Stop serving (from another thread than ``serve_forever``'s) and free the port."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def __enter__(self) -> LocalShortener:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def start_local_shortener(host: str = "127.0.0.1", port: int = 0) -> LocalShortener:
    """Start a shortener in a background thread (``port=0``: a free port); see ``.url``."""
    return LocalShortener(host, port).start()


def _handler_for(shortener: LocalShortener, *, quiet: bool) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "local-shortener/1"

        def do_POST(self) -> None:
            if urlparse(self.path).path != "/":
                self._json(HTTPStatus.NOT_FOUND, {"error": "POST the long URL to /"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > _MAX_BODY_BYTES:
                self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "body too large"})
                return
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
                long_url = body["url"]
            except (ValueError, KeyError, TypeError):
                self._json(HTTPStatus.BAD_REQUEST, {"error": 'expected JSON {"url": "..."}'})
                return
            if not isinstance(long_url, str) or urlparse(long_url).scheme not in ("http", "https"):
                self._json(HTTPStatus.BAD_REQUEST, {"error": "url must be an http(s) URL"})
                return
            short_url = shortener.shorten(long_url)
            self._json(
                HTTPStatus.CREATED,
                {"short_url": short_url, "code": short_url.rsplit("/", 1)[1], "url": long_url},
            )

        def do_GET(self) -> None:
            code = urlparse(self.path).path.lstrip("/")
            if not code:
                self._json(HTTPStatus.OK, {"links": shortener.link_count()})
                return
            if code == "health":
                self._json(HTTPStatus.OK, {"status": "ok"})
                return
            long_url = shortener.resolve(code)
            if long_url is None:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"unknown code {code!r}"})
                return
            self.send_response(HTTPStatus.FOUND)
            self.send_header("Location", long_url)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _json(self, status: HTTPStatus, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args) -> None:
            if not quiet:
                super().log_message(format, *args)

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stripe_crm_pipelines.local.shortener",
        description="In-memory URL shortener for local development: POST / with "
        '{"url": ...} returns {"short_url": ...}; GET /<code> redirects.',
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default %(default)s)"
    )
    parser.add_argument("--port", type=int, default=8765, help="port to bind (default %(default)s)")
    parser.add_argument(
        "--quiet", action="store_true", help="print no line per request (make dev passes it)"
    )
    args = parser.parse_args(argv)
    shortener = LocalShortener(args.host, args.port, quiet=args.quiet)
    print(f"local shortener listening on {shortener.url}", file=sys.stderr, flush=True)
    try:
        shortener.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        shortener.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
