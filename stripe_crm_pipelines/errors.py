"""Which failures are worth another try, for every capability alike.

Stripe requests are already retried inside the client (``resources.stripe``) and MongoDB calls
inside the store wrapper (``resilience``); an error that still arrives here decides whether the
op as a whole may try again (from its checkpoint) or must fail for good with its message.
"""

from __future__ import annotations

import stripe
from pymongo.errors import ConnectionFailure

RETRYABLE_STRIPE_STATUSES = frozenset({409, 429, 500, 502, 503, 504})
"""Stripe answers that may succeed when asked again: lock timeout, rate limit, server errors."""
MONGO_CONNECTION_ERRORS: tuple[type[Exception], ...] = (ConnectionFailure,)
"""``ConnectionFailure`` and its subclasses ``AutoReconnect``, ``NetworkTimeout`` and
``ServerSelectionTimeoutError``: the server went away for a moment."""
DUPLICATE_KEY = 11000
"""MongoDB's error code for a write that broke a unique index."""


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` may go away by itself: a connection failure, or Stripe answering
    409/429/5xx. A refused key, a bad request or a missing object never do."""
    if isinstance(error, stripe.APIConnectionError):
        return True
    if isinstance(error, stripe.StripeError):
        return error.http_status in RETRYABLE_STRIPE_STATUSES
    return isinstance(error, MONGO_CONNECTION_ERRORS)
