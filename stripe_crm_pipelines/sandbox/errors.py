"""Stripe API errors as the sandbox raises and serialises them."""

from __future__ import annotations

import math
from typing import Any

# Error type Stripe uses for each HTTP status the sandbox can answer with.
ERROR_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "card_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    429: "rate_limit_error",
}

_DEFAULT_MESSAGES = {
    401: "Invalid API Key provided.",
    402: "Your card was declined.",
    403: "The provided key does not have the required permissions for this endpoint.",
    404: "Resource not found.",
    409: "This object cannot be accessed right now because another API request or Stripe "
    "process is currently accessing it. If you see this error intermittently, retry the "
    "request.",
    429: "Request rate limit exceeded. You can learn more about rate limits here "
    "https://stripe.com/docs/rate-limits.",
}

_DEFAULT_CODES = {409: "lock_timeout", 429: "rate_limit", 402: "card_declined"}


class StripeApiError(Exception):
    """An API error answered with Stripe's body ``{"error": {type, message, param, code}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type or ERROR_TYPE_BY_STATUS.get(status, "api_error")
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON body Stripe sends for this error."""
        error: dict[str, Any] = {"type": self.error_type, "message": self.message}
        if self.param is not None:
            error["param"] = self.param
        if self.code is not None:
            error["code"] = self.code
        return {"error": error}


def error_for_status(
    status: int, message: str | None = None, retry_after: float | None = None
) -> StripeApiError:
    """A Stripe-like error for an HTTP status (used by injected faults)."""
    headers = {}
    if status == 429:
        seconds = 1.0 if retry_after is None else retry_after
        headers["Retry-After"] = str(max(0, math.ceil(seconds)))
    return StripeApiError(
        status,
        message or _DEFAULT_MESSAGES.get(status, "An unknown error occurred"),
        code=_DEFAULT_CODES.get(status),
        headers=headers,
    )


def invalid(message: str, param: str | None = None, code: str | None = None) -> StripeApiError:
    """A 400 invalid_request_error."""
    return StripeApiError(400, message, param=param, code=code)


def missing_param(param: str) -> StripeApiError:
    """Stripe's error for a required parameter that was not sent."""
    return invalid(f"Missing required param: {param}.", param, "parameter_missing")


def no_such(kind: str, object_id: str, param: str | None = "id") -> StripeApiError:
    """Stripe's 404 for an object that does not exist (in the requesting account)."""
    return StripeApiError(
        404, f"No such {kind}: '{object_id}'", param=param, code="resource_missing"
    )
