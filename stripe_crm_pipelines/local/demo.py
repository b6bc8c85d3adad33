"""Write the demo data of ``make dev``: one CRM account connected to a sandbox Stripe account.

The account, its billing Stripe key, five existing contacts whose emails match sandbox customers
in another case, a business contact for payment links, and one pending import request.
Everything has a fixed id and is written with ``$setOnInsert``, so seeding twice changes
nothing: the demo import request is created once, and once imported it stays completed.

``make dev`` seeds it on start. Run on its own, it seeds the store the other tools read
(``MONGODB_URI``, else ``make dev``'s ``.local/store`` when run in the project directory)
against a running sandbox.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import pymongo.errors
import requests
import stripe
from bson import ObjectId

from stripe_crm_pipelines import cli_store, store
from stripe_crm_pipelines.resources.stripe import StripeResource

DEMO_ACCOUNT_ID = ObjectId("650000000000000000000001")
DEMO_USER_ID = ObjectId("650000000000000000000002")
DEMO_CLIENT_ID = ObjectId("650000000000000000000003")
DEMO_IMPORT_ID = ObjectId("650000000000000000000010")
DEMO_PAYMENT_CONTACT_ID = ObjectId("650000000000000000000020")
DEMO_STRIPE_ACCOUNT = "acct_1DemoCrmSandbox"
# Accepted only by the local sandbox; it has no meaning to Stripe.
DEMO_SECRET_KEY = "sk_test_local_sandbox_demo"
DEMO_CUSTOMER_COUNT = 250
DEFAULT_SANDBOX_URL = "http://127.0.0.1:12111"
DEMO_SYNC_INTERVAL_SECONDS = 30
DEMO_MAPPINGS = {
    "name": "name",
    "phone": "phone",
    "address-street": "address.street",
    "address-city": "address.city",
    "address-state": "address.state_province",
    "address-zip": "address.zip",
    "address-country": "address.country",
    "shipping-address-city": "shipping.address.city",
}
EXISTING_CONTACTS = 5


@dataclass(frozen=True)
class DemoSummary:
    account_id: str
    import_id: str
    payment_contact_id: str
    existing_contacts: int

    def describe(self) -> str:
        return (
            f"Demo data ready: account {self.account_id}, import request {self.import_id}, "
            f"payment-link contact {self.payment_contact_id}"
        )


def seed_from_sandbox(db, sandbox_url: str) -> DemoSummary:
    """:func:`seed_demo` against the local Stripe sandbox at ``sandbox_url``."""
    client = StripeResource(api_base=sandbox_url).client(DEMO_SECRET_KEY, DEMO_STRIPE_ACCOUNT)
    return seed_demo(db, client)


def seed_demo(db, stripe_client: stripe.StripeClient) -> DemoSummary:
    """Write the demo account, its Stripe key, a few existing contacts and one import request.

    ``stripe_client`` must reach the sandbox's demo connected account: a handful of its customers
    become existing CRM contacts (emails upper-cased, so the import has to match them
    case-insensitively).
    """
    now = dt.datetime.now(dt.UTC)
    store.ensure_indexes(db)
    _insert_once(db[store.ACCOUNTS], DEMO_ACCOUNT_ID, {"name": "Demo Agency", "createdAt": now})
    _insert_once(
        db[store.STRIPE_KEYS],
        ObjectId("650000000000000000000004"),
        {
            "account_id": DEMO_ACCOUNT_ID,
            "connected_apps": ["billing"],
            "token": {"access_token": DEMO_SECRET_KEY, "stripe_user_id": DEMO_STRIPE_ACCOUNT},
        },
    )
    customers = [
        customer
        for customer in (c.to_dict() for c in stripe_client.v1.customers.list({"limit": 50}).data)
        if customer.get("email")
    ][:EXISTING_CONTACTS]
    for index, customer in enumerate(customers):
        _insert_once(
            db[store.CONTACTS],
            ObjectId(f"6500000000000000000001{index:02d}"),
            {
                "email": customer["email"].strip().upper(),
                "type": "person",
                "parent_account": DEMO_ACCOUNT_ID,
                "owner": DEMO_USER_ID,
                "created_by": DEMO_USER_ID,
                "name": "Existing CRM contact",
                "source": "crm",
            },
        )
    _insert_once(
        db[store.CONTACTS],
        DEMO_PAYMENT_CONTACT_ID,
        {
            "email": "billing@demo-client.example",
            "phone": "+15555550100",
            "name": "Demo Client LLC",
            "type": "business",
            "parent_account": DEMO_ACCOUNT_ID,
            "owner": DEMO_USER_ID,
            "created_by": DEMO_USER_ID,
            "address": {
                "street": "1 Market St",
                "city": "San Francisco",
                "state_province": "CA",
                "zip": "94105",
                "country": "US",
            },
            "source": "crm",
        },
    )
    _insert_once(
        db[store.QUEUES],
        DEMO_IMPORT_ID,
        {
            "status": "pending",
            "source": "billing-contacts",
            "in_progress": False,
            "type": "contacts",
            "account_id": DEMO_ACCOUNT_ID,
            "user_id": DEMO_USER_ID,
            "parent_account": DEMO_ACCOUNT_ID,
            "client_id": DEMO_CLIENT_ID,
            "mappings": DEMO_MAPPINGS,
            "new_contact": True,
            # Kept in step after the import; synced every 30 s (not 300) so that a customer
            # edited in the sandbox shows on its contact within half a minute.
            "keep_in_sync": True,
            "deletion_policy": "archive",
            "sync_interval_seconds": DEMO_SYNC_INTERVAL_SECONDS,
            "createdAt": now,
        },
    )
    return DemoSummary(
        account_id=str(DEMO_ACCOUNT_ID),
        import_id=str(DEMO_IMPORT_ID),
        payment_contact_id=str(DEMO_PAYMENT_CONTACT_ID),
        existing_contacts=len(customers),
    )


def _insert_once(collection, document_id: ObjectId, fields: dict) -> None:
    collection.update_one({"_id": document_id}, {"$setOnInsert": fields}, upsert=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m stripe_crm_pipelines.local.demo",
        description=__doc__.replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit status: 0 seeded (or already there), 1 the sandbox or the store cannot be "
        "reached.",
    )
    parser.add_argument(
        "--sandbox-url",
        default=DEFAULT_SANDBOX_URL,
        metavar="URL",
        help="the running local Stripe sandbox that holds the demo customers "
        f"(default {DEFAULT_SANDBOX_URL}, as make dev starts it)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not _sandbox_answers(args.sandbox_url):
        print(
            f"error: no Stripe sandbox answers at {args.sandbox_url}; start `make dev` or "
            "`python -m stripe_crm_pipelines.sandbox --port 12111 --seed-customers 250 "
            f"--account {DEMO_STRIPE_ACCOUNT}`",
            file=sys.stderr,
        )
        return 1
    choice = cli_store.choose_store()
    print(choice.describe(), file=sys.stderr)
    try:
        summary = seed_from_sandbox(store.connect(choice.uri), args.sandbox_url)
    except store.StoreConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except pymongo.errors.PyMongoError as error:
        print(f"error: cannot write the demo data: {error}", file=sys.stderr)
        return 1
    print(summary.describe())
    return 0


def _sandbox_answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/_sandbox/health", timeout=2).ok
    except requests.RequestException:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
