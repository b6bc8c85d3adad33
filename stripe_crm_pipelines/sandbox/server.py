"""The sandbox's HTTP server: Stripe's ``/v1`` API, the ``/_sandbox`` control API and hosted
invoice pages, served concurrently from daemon threads."""

from __future__ import annotations

import contextlib
import html
import json
import re
import secrets
import socket
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs

from stripe_crm_pipelines.sandbox.controls import SandboxSettings
from stripe_crm_pipelines.sandbox.state import ApiRequest, SandboxState

_HOSTED_INVOICE = re.compile(r"/i/([^/]+)/([^/]+)(?:/pdf)?")


class _HttpServer(ThreadingHTTPServer):
    """A threading HTTP server that knows its sandbox and can close its open connections."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], state: SandboxState, verbose: bool) -> None:
        super().__init__(address, _Handler)
        self.state = state
        self.verbose = verbose
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Shut every open (keep-alive) connection, so handler threads end."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore clients that went away (timeouts, resets); report anything else."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _HttpServer

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def _dispatch(self) -> None:
        path, _, query = self.path.partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        if path.startswith("/_sandbox/"):
            self._control(path, query, body)
            return
        hosted = _HOSTED_INVOICE.fullmatch(path)
        if hosted and self.command == "GET":
            self._hosted_invoice(*hosted.groups())
            return
        request = ApiRequest(
            method=self.command,
            path=path,
            query=query,
            body=body,
            headers={
                name: value
                for name in ("Authorization", "Stripe-Account", "Idempotency-Key")
                if (value := self.headers.get(name)) is not None
            },
            base_url=self._base_url(),
        )
        response = self.server.state.process(request)
        if response.reset:
            self._reset_connection()
            return
        headers = dict(response.headers)
        headers["Stripe-Version"] = self.headers.get("Stripe-Version") or "sandbox"
        self._send(response.status, response.body, headers)

    def _base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{self.headers.get('Host') or f'{host}:{port}'}"

    def _send(
        self,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        headers = headers or {}
        if "Request-Id" not in headers:
            self.send_header("Request-Id", f"req_{secrets.token_hex(7)}")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _reset_connection(self) -> None:
        """Drop the connection without a response (closed with a TCP reset)."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    def _hosted_invoice(self, account_label: str, invoice_id: str) -> None:
        state = self.server.state
        with state.lock:
            invoice = state.api.hosted_invoice(account_label, invoice_id)
            page = _invoice_page(invoice) if invoice else None
        if page is None:
            self._send(404, b"Invoice not found", content_type="text/plain; charset=utf-8")
        else:
            self._send(200, page.encode(), content_type="text/html; charset=utf-8")

    def _control(self, path: str, query: str, body: str) -> None:
        try:
            payload = json.loads(body) if body.strip() else {}
            if not isinstance(payload, dict):
                raise ValueError("the request body must be a JSON object")
            filters = {key: values[-1] for key, values in parse_qs(query).items()}
            status, result = _control_endpoint(
                self.server.state, self.command, path, filters, payload
            )
        except (ValueError, TypeError, KeyError) as error:
            status = 400
            message = f"missing field {error}" if isinstance(error, KeyError) else str(error)
            result = {"error": {"type": "invalid_request_error", "message": message}}
        self._send(status, json.dumps(result, ensure_ascii=False).encode())


def _control_endpoint(
    state: SandboxState,
    method: str,
    path: str,
    query: dict[str, str],
    payload: dict[str, Any],
) -> tuple[int, Any]:
    """Answer a ``/_sandbox/...`` control request: ``(status, JSON body)``."""
    endpoint = f"{method} {path.rstrip('/')}"
    if endpoint == "GET /_sandbox/health":
        return 200, {"status": "ok"}
    if endpoint == "GET /_sandbox/settings":
        return 200, state.settings.to_dict()
    if endpoint == "POST /_sandbox/settings":
        return 200, state.configure(**payload).to_dict()
    if endpoint == "GET /_sandbox/faults":
        return 200, {"data": [fault.to_dict() for fault in state.faults.active()]}
    if endpoint == "POST /_sandbox/faults":
        return 200, state.inject_fault(**payload).to_dict()
    if endpoint == "DELETE /_sandbox/faults":
        state.clear_faults()
        return 200, {"deleted": True}
    if endpoint == "POST /_sandbox/forbidden_keys":
        state.forbid_key(str(payload["api_key"]), payload.get("account"))
        return 200, {"api_key": payload["api_key"], "account": payload.get("account")}
    if endpoint == "DELETE /_sandbox/forbidden_keys":
        state.clear_forbidden_keys()
        return 200, {"deleted": True}
    if endpoint == "GET /_sandbox/requests":
        return 200, {"data": state.requests(query.get("path"), query.get("method"))}
    if endpoint == "GET /_sandbox/requests/counts":
        return 200, state.request_counts()
    if endpoint == "DELETE /_sandbox/requests":
        state.clear_requests()
        return 200, {"deleted": True}
    if endpoint == "POST /_sandbox/seed":
        account = payload.get("account")
        ids = state.seed_customers(
            int(payload.get("count", 0)), int(payload.get("seed", 42)), account
        )
        return 200, {"account": account, "count": len(ids), "ids": ids}
    if endpoint == "POST /_sandbox/customers":
        fields = dict(payload)
        return 200, state.add_customer(fields.pop("account", None), **fields)
    if endpoint == "GET /_sandbox/clock":
        return 200, _clock(state)
    if endpoint == "POST /_sandbox/clock":
        state.advance_clock(payload["advance_seconds"])
        return 200, _clock(state)
    if endpoint == "GET /_sandbox/accounts":
        return 200, state.accounts()
    if endpoint == "POST /_sandbox/reset":
        state.reset()
        return 200, {"reset": True}
    return 404, {"error": {"type": "invalid_request_error", "message": f"Unknown: {endpoint}"}}


def _clock(state: SandboxState) -> dict[str, float]:
    return {"now": state.now(), "offset_seconds": state.clock_offset}


def _invoice_page(invoice: dict[str, Any]) -> str:
    """A minimal hosted invoice page."""
    rows = "".join(
        f"<tr><td>{html.escape(line['description'] or '')}</td><td>{line['quantity']}</td>"
        f"<td>{line['amount'] / 100:.2f}</td></tr>"
        for line in invoice["lines"]["data"]
    )
    title = html.escape(f"Invoice {invoice['number']}")
    return (
        f"<!doctype html><html><head><title>{title}</title></head><body><h1>{title}</h1>"
        f"<p>Status: {invoice['status']}. Amount due: {invoice['amount_due'] / 100:.2f} "
        f"{invoice['currency'].upper()}</p><table>{rows}</table></body></html>"
    )


class SandboxServer:
    """A Stripe sandbox on ``host:port`` (``port=0``: a free port), served from a background
    thread after :meth:`start`, or as a context manager.

    ``settings`` are :class:`SandboxSettings` fields (``latency_ms``, ``rate_limit``,
    ``search_index_delay``, ``api_keys``, ...); ``state`` seeds, inspects and reconfigures the
    sandbox in-process. ``verbose`` prints an access log to stderr.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, verbose: bool = False, **settings: Any
    ) -> None:
        self.state = SandboxState(SandboxSettings().replace(**settings))
        self._httpd = _HttpServer((host, port), self.state, verbose)
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        """The address the server listens on."""
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The base URL clients use (``STRIPE_API_BASE``), e.g. ``http://127.0.0.1:12111``."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> SandboxServer:
        """Serve in a daemon thread; returns ``self``."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.1},
                name=f"stripe-sandbox-{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake requests sleeping on latency or faults, close connections."""
        self.state.stopping.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.close_connections()
        self._httpd.server_close()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
