"""The seed's import algorithm (queue-manager/queues/billing/contacts/person.js), ported to Python
as the benchmark's baseline.

As the seed does: the Stripe SDK's auto-paging list (100 a page, one page at a time, SDK objects),
and per customer a ``findOne`` by exact email, type and account, then an ``updateOne`` of the
contact found or an insert of a new one. Field mapping uses this project's mapping functions
(the seed's ``getMapping``), so the comparison is about fetching and writing, not mapping.
Only the bugs that would stop it (the leaking ``dataToInsert`` reused across customers, the
shared ``_id``) are left out; its missing ``createdAt`` handling and exact-email matching stay.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import stripe
from bson import ObjectId

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import.mapping import (
    map_customer,
    old_field_values,
    parse_mappings,
    set_fields,
)


@dataclass
class BaselineResult:
    added: int = 0
    updated: int = 0
    errors: int = 0
    customers: int = 0


def run_seed_import(
    client: stripe.StripeClient,
    db,
    *,
    account_id: ObjectId,
    owner: ObjectId,
    mappings: dict[str, str],
    new_contact: bool,
    import_id: ObjectId,
) -> BaselineResult:
    """person.js ``processCb`` for one queued import, then its ``completedCb``."""
    contacts = db[store.CONTACTS]
    parsed = parse_mappings(mappings)
    result = BaselineResult()
    base: dict[str, Any] = {
        "parent_account": account_id,
        "owner": owner,
        "created_by": owner,
        "type": "person",
    }
    invalid: list[dict[str, Any]] = []
    contact = None
    try:
        for customer in client.v1.customers.list(params={"limit": 100}).auto_paging_iter():
            result.customers += 1
            data = customer.to_dict()
            contact = data
            customer_data = set_fields(map_customer(data, parsed)) if parsed else {}
            to_insert = {**base, **customer_data, "stripe_customer_id": data["id"]}
            existing = contacts.find_one(
                {"email": data.get("email"), "type": "person", "parent_account": account_id}
            )
            if existing is not None:
                if parsed:
                    update = {
                        **set_fields(map_customer(data, parsed)),
                        "old_field_values": old_field_values(existing, parsed),
                    }
                else:
                    update = {"stripe_customer_id": data["id"]}
                contacts.update_one({"_id": existing["_id"]}, {"$set": update})
                result.updated += 1
            elif new_contact:
                to_insert["source"] = "stripe"
                to_insert["email"] = data.get("email")
                contacts.insert_one(to_insert)
                result.added += 1
    except Exception as error:  # the seed's single try/catch around the whole loop
        invalid.append({"message": str(error), "email": (contact or {}).get("email")})
        result.errors += 1
    db[store.IMPORT_RESULTS].insert_one(
        {
            "status": "in_progress",
            "name": "stripe",
            "type": "person",
            "records_added": result.added,
            "records_updated": result.updated,
            "import_errors_count": result.errors,
            "user_id": owner,
            "account_id": str(account_id),
            "importerrors": invalid,
            "createdAt": datetime.now(UTC),
        }
    )
    db[store.QUEUES].delete_one({"_id": import_id})
    return result
