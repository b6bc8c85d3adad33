"""Demo data for ``make dev``: one CRM account connected to a sandbox Stripe account.

Everything has a fixed id and is written with ``$setOnInsert``, so seeding twice changes
nothing: the demo import request is created once, and once imported it stays completed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import stripe
from bson import ObjectId

from stripe_crm_pipelines import store

DEMO_ACCOUNT_ID = ObjectId("650000000000000000000001")
DEMO_USER_ID = ObjectId("650000000000000000000002")
DEMO_CLIENT_ID = ObjectId("650000000000000000000003")
DEMO_IMPORT_ID = ObjectId("650000000000000000000010")
DEMO_PAYMENT_CONTACT_ID = ObjectId("650000000000000000000020")
DEMO_STRIPE_ACCOUNT = "acct_1DemoCrmSandbox"
# Accepted only by the local sandbox; it has no meaning to Stripe.
DEMO_SECRET_KEY = "sk_test_local_sandbox_demo"
DEMO_CUSTOMER_COUNT = 250
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
