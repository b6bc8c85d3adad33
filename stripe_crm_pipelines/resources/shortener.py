"""The URL shortener that turns hosted invoice URLs into links a person can share."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse

import requests
from dagster import ConfigurableResource
from pydantic import Field


@dataclass(frozen=True)
class ShortenedUrl:
    """The URL to share; ``problem`` says why it is the long URL when shortening failed."""

    url: str
    shortened: bool
    problem: str | None = None


class ShortenerResource(ConfigurableResource):
    """POSTs ``{"url": long_url}`` to the shortener and reads ``short_url`` from its JSON answer.

    The protocol is the one :mod:`stripe_crm_pipelines.local.shortener` serves. With no base URL
    (``definitions.py`` binds it to ``SHORTENER_URL`` when that is set) nothing is shortened and
    the long URL is kept.
    """

    base_url: str | None = Field(
        default=None,
        description="Shortener endpoint, e.g. http://127.0.0.1:8765 (SHORTENER_URL); empty "
        "means links stay long.",
    )
    timeout_seconds: float = Field(default=5.0, description="Timeout of the shortening request.")

    def resolved_base_url(self) -> str | None:
        return (self.base_url or "").rstrip("/") or None

    def shorten(self, long_url: str) -> ShortenedUrl:
        """The short URL, or ``long_url`` with the reason when there is no usable answer."""
        endpoint = self.resolved_base_url()
        if endpoint is None:
            return ShortenedUrl(long_url, shortened=False)
        try:
            response = requests.post(
                f"{endpoint}/", json={"url": long_url}, timeout=self.timeout_seconds
            )
            response.raise_for_status()
            short_url = response.json().get("short_url")
        except (requests.RequestException, ValueError, AttributeError) as error:
            return ShortenedUrl(
                long_url, shortened=False, problem=f"{type(error).__name__}: {error}"
            )
        if not isinstance(short_url, str) or urlparse(short_url).scheme not in ("http", "https"):
            return ShortenedUrl(
                long_url,
                shortened=False,
                problem=f"no http(s) short_url in the answer: {short_url!r}",
            )
        return ShortenedUrl(short_url, shortened=True)
