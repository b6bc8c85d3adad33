"""HTTP client of the ``/_sandbox`` control API, for a sandbox running in another process."""

from __future__ import annotations

import time
from typing import Any

import requests


class SandboxControlError(RuntimeError):
    """The control API refused a request."""


class SandboxControl:
    """Seeds, configures and inspects a running sandbox (e.g. one started with
    ``python -m stripe_crm_pipelines.sandbox``) through its control API.

    ``url`` is the sandbox's base URL, e.g. ``http://127.0.0.1:12111``.
    """

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()

    def _call(
        self,
        method: str,
        endpoint: str,
        body: dict[str, Any] | None = None,
        query: dict[str, str | None] | None = None,
    ) -> Any:
        response = self._session.request(
            method,
            f"{self.url}/_sandbox/{endpoint}",
            json=body,
            params={k: v for k, v in (query or {}).items() if v is not None},
            timeout=self.timeout,
        )
        if response.status_code != 200:
            raise SandboxControlError(f"{method} /_sandbox/{endpoint}: {response.text}")
        return response.json()

    def health(self) -> bool:
        """Whether the sandbox answers."""
        try:
            return self._call("GET", "health")["status"] == "ok"
        except requests.RequestException:
            return False

    def wait_until_ready(self, timeout: float = 10.0) -> None:
        """Block until the sandbox answers; ``TimeoutError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self.health():
            if time.monotonic() > deadline:
                raise TimeoutError(f"Stripe sandbox at {self.url} did not answer")
            time.sleep(0.05)

    def settings(self) -> dict[str, Any]:
        """The current settings."""
        return self._call("GET", "settings")

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Change settings (``latency_ms``, ``endpoint_latency_ms``, ``rate_limit``,
        ``rate_limit_burst``, ``search_index_delay``, ``allow_live``, ``api_keys``,
        ``fault_seed``); returns all settings."""
        return self._call("POST", "settings", settings)

    def inject_fault(self, **fault: Any) -> dict[str, Any]:
        """Queue a fault (``kind``, ``endpoint``, ``status``, ``count``, ``probability``,
        ``retry_after``, ``delay``, ``after_effect``, ``message``); returns it with its id."""
        return self._call("POST", "faults", fault)

    def faults(self) -> list[dict[str, Any]]:
        """The faults not used up yet."""
        return self._call("GET", "faults")["data"]

    def clear_faults(self) -> None:
        """Remove every fault."""
        self._call("DELETE", "faults")

    def forbid_key(self, api_key: str, account: str | None = None) -> None:
        """Answer 403 to ``api_key`` on ``account`` (``None``: every account)."""
        self._call("POST", "forbidden_keys", {"api_key": api_key, "account": account})

    def clear_forbidden_keys(self) -> None:
        """Allow every key again."""
        self._call("DELETE", "forbidden_keys")

    def requests(self, path: str | None = None, method: str | None = None) -> list[dict[str, Any]]:
        """Logged API requests, oldest first, optionally only to ``path`` / with ``method``."""
        return self._call("GET", "requests", query={"path": path, "method": method})["data"]

    def request_counts(self) -> dict[str, int]:
        """Requests seen per ``"METHOD /path"``."""
        return self._call("GET", "requests/counts")

    def clear_requests(self) -> None:
        """Empty the request log."""
        self._call("DELETE", "requests")

    def seed(self, count: int, seed: int = 42, account: str | None = None) -> list[str]:
        """Add ``count`` deterministic realistic customers to ``account`` (``None``: the
        platform); returns their ids, oldest first."""
        return self._call("POST", "seed", {"count": count, "seed": seed, "account": account})["ids"]

    def add_customer(self, account: str | None = None, **fields: Any) -> dict[str, Any]:
        """Store a customer with exactly these fields (``created`` and ``id`` included)."""
        return self._call("POST", "customers", {**fields, "account": account})

    def clock(self) -> dict[str, float]:
        """The sandbox's time: ``{"now": epoch seconds, "offset_seconds": ahead of the wall
        clock}``."""
        return self._call("GET", "clock")

    def advance_clock(self, seconds: float) -> dict[str, float]:
        """Move the sandbox's time forward (e.g. ``31 * 86400`` to let its events expire);
        returns :meth:`clock`."""
        return self._call("POST", "clock", {"advance_seconds": seconds})

    def accounts(self) -> dict[str, dict[str, int]]:
        """Object counts per account (the platform is named ``platform``)."""
        return self._call("GET", "accounts")

    def reset(self) -> None:
        """Forget all data, events, faults, logs and keys; restore the start-up settings and
        the wall clock."""
        self._call("POST", "reset")

    def close(self) -> None:
        """Close the HTTP session."""
        self._session.close()
