"""Command line: run a Stripe sandbox until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from stripe_crm_pipelines.sandbox.server import SandboxServer

CONTROL_API_HELP = """\
control API (JSON, no key needed):
  GET    /_sandbox/health              200 when up
  GET    /_sandbox/settings            current settings
  POST   /_sandbox/settings            {"latency_ms": 50, "rate_limit": 25,
                                        "endpoint_latency_ms": {"GET /v1/customers": 200},
                                        "search_index_delay": 5,
                                        "reject_created": true, ...}
  POST   /_sandbox/faults              {"endpoint": "GET /v1/customers", "status": 500,
                                        "count": 2} | {"kind": "reset"} |
                                       {"kind": "timeout", "delay": 30} |
                                       {"status": 429, "retry_after": 2,
                                        "probability": 0.1, "count": null}
  GET|DELETE /_sandbox/faults          list | clear faults
  POST|DELETE /_sandbox/forbidden_keys {"api_key": "sk_test_x", "account": "acct_1"} -> 403
  GET    /_sandbox/requests[?path=&method=]   request log; DELETE clears it
  GET    /_sandbox/requests/counts     requests per "METHOD /path"
  POST   /_sandbox/seed                {"account": "acct_1" | null, "count": 1000, "seed": 42}
  POST   /_sandbox/customers           {"account": ..., "email": ..., "created": 1700000000}
  GET    /_sandbox/accounts            object counts per account
  GET    /_sandbox/clock               {"now": ..., "offset_seconds": ...}: the sandbox's time
  POST   /_sandbox/clock               {"advance_seconds": 2678400}: move it forward (31 days:
                                        today's events pass the 30-day retention)
  POST   /_sandbox/reset               forget everything, restore start-up settings and clock
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line options."""
    parser = argparse.ArgumentParser(
        prog="python -m stripe_crm_pipelines.sandbox",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=CONTROL_API_HELP,
        description="Run a local, stateful Stripe API server for tests and local runs. Point "
        "the stripe SDK (or STRIPE_API_BASE) at the printed URL and use any sk_test_ key. "
        "Seed, inspect and inject faults at runtime through /_sandbox/... (see "
        "stripe_crm_pipelines.sandbox.SandboxControl).",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=12111,
        help="port to bind, 0 for a free one (default: %(default)s)",
    )
    parser.add_argument(
        "--seed-customers",
        type=int,
        default=0,
        metavar="N",
        help="create N realistic customers at start-up (default: none)",
    )
    parser.add_argument(
        "--account",
        metavar="ACCT_ID",
        help="connected account (acct_...) to seed; default: the platform account, the one "
        "requests without a Stripe-Account header see",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=42,
        help="random seed of the generated customers (default: %(default)s)",
    )
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="delay added to every API request (default: 0)",
    )
    parser.add_argument(
        "--rate-limit",
        type=float,
        default=0.0,
        metavar="PER_SECOND",
        help="requests per second per API key before 429 with Retry-After (default: 0, off)",
    )
    parser.add_argument(
        "--rate-limit-burst", type=int, metavar="N", help="token bucket size (default: the rate)"
    )
    parser.add_argument(
        "--search-index-delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="seconds before a new customer appears in /v1/customers/search (default: 0)",
    )
    parser.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        metavar="KEY",
        help="accept only this key (repeatable); default: any sk_test_/rk_test_ key",
    )
    parser.add_argument(
        "--allow-live", action="store_true", help="also accept sk_live_/rk_live_ keys"
    )
    parser.add_argument(
        "--reject-created",
        action="store_true",
        help='answer list calls that filter by `created` with HTTP 400 "Unexpected created", '
        "like servers without the filter (localstripe)",
    )
    parser.add_argument("--verbose", action="store_true", help="print an access log to stderr")
    args = parser.parse_args(argv)
    if args.account is not None and not args.account.startswith("acct_"):
        parser.error("--account must be a connected account id (acct_...)")
    if args.seed_customers < 0:
        parser.error("--seed-customers must not be negative")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the sandbox; returns the exit status."""
    args = parse_args(argv)
    try:
        server = SandboxServer(
            args.host,
            args.port,
            verbose=args.verbose,
            latency_ms=args.latency_ms,
            rate_limit=args.rate_limit,
            rate_limit_burst=args.rate_limit_burst,
            search_index_delay=args.search_index_delay,
            api_keys=args.api_keys,
            allow_live=args.allow_live,
            reject_created=args.reject_created,
        )
    except (OSError, ValueError) as error:
        print(f"Stripe sandbox cannot start on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 1
    if args.seed_customers:
        server.state.seed_customers(args.seed_customers, args.seed, args.account)
        print(
            f"Seeded {args.seed_customers} customers (seed {args.seed}) in "
            f"{args.account or 'the platform account'}",
            file=sys.stderr,
        )
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    server.start()
    print(f"Stripe sandbox listening on {server.url}", flush=True)
    while not stop.wait(0.5):
        pass
    server.stop()
    print("Stripe sandbox stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
