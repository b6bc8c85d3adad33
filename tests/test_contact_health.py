"""The catalog's checks of an account's contacts: one account at a time (a grouping on the
server) and many small accounts at once (a batch of imports) must give the same verdicts."""

from __future__ import annotations

from bson import ObjectId

from stripe_crm_pipelines import store
from stripe_crm_pipelines.contact_health import uniqueness_checks, uniqueness_checks_by_account


def contact(account_id: ObjectId, contact_type: str = "person", **fields) -> dict:
    return {"parent_account": account_id, "type": contact_type, **fields}


def test_checks_of_many_accounts_match_the_one_account_checks(db):
    clean, shared_id, shared_email, quiet = (ObjectId() for _ in range(4))
    db[store.CONTACTS].insert_many(
        [
            contact(clean, stripe_customer_id="cus_1", email_key="a@x.org"),
            contact(clean, "business", stripe_customer_id="cus_1", email_key="a@x.org"),
            contact(clean, email_key=None),
            contact(shared_id, stripe_customer_id="cus_2"),
            contact(shared_id, stripe_customer_id="cus_2"),
            contact(shared_id, stripe_customer_id="cus_3", email_key="b@x.org"),
            contact(shared_email, email_key="c@x.org"),
            contact(shared_email, email_key="c@x.org"),
            contact(shared_email, email_key="c@x.org"),
            contact(shared_email, email_key="d@x.org"),
        ]
    )
    accounts = [clean, shared_id, shared_email, quiet]

    together = uniqueness_checks_by_account(db, accounts)

    for account_id in accounts:
        assert together[account_id] == uniqueness_checks(db, account_id)
    verdicts = {
        account_id: [(check.name, check.passed, check.count) for check in together[account_id]]
        for account_id in accounts
    }
    assert verdicts[clean] == [("unique_stripe_customer_ids", True, 0), ("unique_emails", True, 0)]
    assert verdicts[shared_id] == [
        ("unique_stripe_customer_ids", False, 1),
        ("unique_emails", True, 0),
    ]
    assert verdicts[shared_email] == [
        ("unique_stripe_customer_ids", True, 0),
        ("unique_emails", False, 1),
    ]
    assert together[shared_email][1].examples == [
        {"type": "person", "value": "c@x.org", "contacts": 3}
    ]
    assert verdicts[quiet] == verdicts[clean]
