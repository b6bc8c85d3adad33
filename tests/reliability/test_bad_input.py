"""Bad input, end to end through the sensor and the job: every malformed request ends with a
clear error on the request and on its import result, writes no contact, calls Stripe only when it
must to find out, and leaves the other requests alone. Then customers with awkward data."""

from __future__ import annotations

from typing import Any

from bson import ObjectId

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import import tags
from stripe_crm_pipelines.billing_import.job import billing_contact_import
from stripe_crm_pipelines.resources import MongoResource, StripeResource
from tests.conftest import SECRET_KEY, add_account, add_request, import_result
from tests.reliability import evaluate_sensor

DROP = object()
FORBIDDEN_KEY = "sk_test_51ForbiddenOnThisConnectedAccount000"
# Built at run time, so no key-shaped literal sits in the repository.
REVOKED_KEY = "sk_" + "live_51RevokedLiveKeyNeverShownAnywhere00"


def token(**changes: Any) -> dict[str, Any]:
    values = {"access_token": SECRET_KEY, "stripe_user_id": None, **changes}
    return {key: value for key, value in values.items() if value is not DROP}


# (case, changes to the request, changes to the account's stripe_key / account, message part)
CASES: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    ("account_id missing", {"account_id": DROP}, {}, "account_id: missing"),
    ("account_id not an id", {"account_id": "acme"}, {}, "account_id: 'acme' is not an ObjectId"),
    ("account_id a number", {"account_id": 42}, {}, "account_id: int is not an ObjectId"),
    ("user_id missing", {"user_id": DROP}, {}, "user_id: missing"),
    ("user_id not an id", {"user_id": "bob"}, {}, "user_id: 'bob' is not an ObjectId"),
    ("parent_account invalid", {"parent_account": "x"}, {}, "parent_account: 'x' is not"),
    ("client_id invalid", {"client_id": []}, {}, "client_id: list is not an ObjectId"),
    ("type unknown", {"type": "deals"}, {}, "type: 'deals' is not one of"),
    ("type missing", {"type": DROP}, {}, "type: missing is not one of"),
    ("mappings a list", {"mappings": ["name"]}, {}, "mappings must be an object"),
    ("mappings a string", {"mappings": "name"}, {}, "mappings must be an object"),
    ("mapping to owner", {"mappings": {"name": "owner"}}, {}, "mappings['name']"),
    ("mapping to _id", {"mappings": {"id": "_id"}}, {}, "mappings['id']"),
    ("mapping to parent_account", {"mappings": {"name": "parent_account"}}, {}, "set by the"),
    ("mapping to source", {"mappings": {"name": "source"}}, {}, "mappings['name']"),
    ("mapping to $set", {"mappings": {"name": "$set"}}, {}, "may not start with '$'"),
    ("mapping to $-segment", {"mappings": {"name": "custom.$where"}}, {}, "mappings['name']"),
    ("mapping empty segment", {"mappings": {"address-city": "address..city"}}, {}, "empty"),
    ("mapping leading dot", {"mappings": {"name": ".name"}}, {}, "mappings['name']"),
    ("mapping not a string", {"mappings": {"name": 7}}, {}, "mappings['name']"),
    ("new_contact a string", {"new_contact": "yes"}, {}, "new_contact: must be true or false"),
    ("new_contact a number", {"new_contact": 1}, {}, "new_contact: must be true or false"),
    ("max_customers zero", {"max_customers": 0}, {}, "max_customers: must be a positive"),
    ("deleted account", {}, {"account": None}, "no longer exists"),
    ("stripe_key without token", {}, {"stripe_key": {}}, "token is missing"),
    ("token not an object", {}, {"stripe_key": {"token": "sk"}}, "token must be an object"),
    ("no access_token", {}, {"token": {"access_token": DROP}}, "access_token is missing"),
    ("no stripe_user_id", {}, {"token": {"stripe_user_id": DROP}}, "stripe_user_id is missing"),
    ("Stripe 401", {}, {"token": {"access_token": REVOKED_KEY}}, "HTTP 401"),
    ("Stripe 403", {}, {"token": {"access_token": FORBIDDEN_KEY}}, "HTTP 403"),
]
GOOD_REQUESTS = 2


def add_case(db, sandbox, number: int, request: dict, account: dict) -> tuple[ObjectId, ObjectId]:
    """An account with its own connected Stripe account (three customers) and one request."""
    stripe_account = f"acct_1BadInput{number:03d}"
    sandbox.state.seed_customers(3, seed=number, account=stripe_account)
    account_id = add_account(db, stripe_account=stripe_account)
    if "stripe_key" in account:
        db[store.STRIPE_KEYS].replace_one(
            {"account_id": account_id},
            {"account_id": account_id, "connected_apps": ["billing"], **account["stripe_key"]},
        )
    if "token" in account:
        changed = token(**{"stripe_user_id": stripe_account, **account["token"]})
        db[store.STRIPE_KEYS].update_one({"account_id": account_id}, {"$set": {"token": changed}})
    import_id = add_request(db, account_id)
    db[store.QUEUES].update_one(
        {"_id": import_id},
        {
            "$set": {k: v for k, v in request.items() if v is not DROP},
            "$unset": {k: "" for k, v in request.items() if v is DROP},
        }
        if any(v is DROP for v in request.values())
        else {"$set": request},
    )
    if account.get("account", ...) is None:
        db[store.ACCOUNTS].delete_one({"_id": account_id})
    return import_id, account_id


def test_malformed_requests_fail_clearly_without_writes_and_others_complete(
    db, mongo_uri, stripe_sandbox, instance
):
    stripe_sandbox.state.forbid_key(FORBIDDEN_KEY)
    cases = {
        name: add_case(db, stripe_sandbox, number, request, account)
        for number, (name, request, account, _) in enumerate(CASES)
    }
    good = [
        add_case(db, stripe_sandbox, 900 + number, {"mappings": {"name": "name"}}, {})
        for number in range(GOOD_REQUESTS)
    ]

    # The sensor asks for a run for every request; none of them stops the others.
    run_requests = evaluate_sensor(instance, mongo_uri).run_requests
    assert len(run_requests) == len(CASES) + GOOD_REQUESTS
    for run_request in run_requests:
        billing_contact_import.execute_in_process(
            run_config=run_request.run_config,
            tags=run_request.tags,
            resources={
                "mongo": MongoResource(uri=mongo_uri),
                "stripe": StripeResource(api_base=stripe_sandbox.url),
            },
            instance=instance,
            raise_on_error=False,
        )

    failures = []
    for name, _, _, message in CASES:
        import_id, account_id = cases[name]
        document = db[store.QUEUES].find_one({"_id": import_id})
        result = import_result(db, import_id)
        written = db[store.CONTACTS].count_documents({"parent_account": account_id})
        outcome = (document["status"], document["in_progress"], result["status"], written)
        if outcome != ("failed", False, "failed", 0) or message not in document["error"]:
            failures.append((name, outcome, document.get("error")))
        assert result["error"] == document["error"]
        assert SECRET_KEY not in document["error"] and REVOKED_KEY not in document["error"]
    assert failures == []
    for import_id, account_id in good:
        assert db[store.QUEUES].find_one({"_id": import_id})["status"] == "completed"
        assert import_result(db, import_id)["records_added"] == 3
        assert db[store.CONTACTS].count_documents({"parent_account": account_id}) == 3
    assert db[store.CONTACTS].count_documents({}) == 3 * GOOD_REQUESTS
    # Stripe was asked only for the accounts whose request and key were valid.
    asked = {entry["stripe_account"] for entry in stripe_sandbox.state.requests()}
    assert asked == {
        run_request.tags[tags.STRIPE_ACCOUNT]
        for run_request in run_requests
        if run_request.tags[tags.IMPORT_ID]
        in {str(cases["Stripe 401"][0]), str(cases["Stripe 403"][0])}
        | {str(import_id) for import_id, _ in good}
    }
    assert evaluate_sensor(instance, mongo_uri).run_requests == [], "nothing is left pending"


# --- customers with awkward data --------------------------------------------------------------

LONG = "x" * 20_000
EDGE_CUSTOMERS = [
    {"id": "cus_unicode", "email": "zoë.æøå@exämple.com", "name": "Zoë 山田 🚀 علي",
     "address": {"line1": "Straße 1", "line2": "Ünit ½", "city": "Zürich", "state": None,
                 "postal_code": None, "country": "CH"}},
    {"id": "cus_long", "email": "long@example.com", "name": LONG,
     "address": {"line1": LONG, "city": "L" * 5000}},
    {"id": "cus_spaces", "email": "  Mixed.Case@Example.COM  ", "name": "Spaces"},
    {"id": "cus_nulls", "email": "nulls@example.com", "name": None,
     "address": {"line1": None, "line2": None, "city": None, "state": None,
                 "postal_code": None, "country": None}},
    {"id": "cus_no_address", "email": "noaddress@example.com", "name": "No Address",
     "address": None, "shipping": None},
    {"id": "cus_metadata", "email": "meta@example.com", "name": "Meta",
     "metadata": {f"key_{i:02d}": f"{i}" * 500 for i in range(50)}},
]  # fmt: skip
EDGE_MAPPINGS = {
    "name": "name",
    "address-street": "address.street",
    "address-city": "address.city",
    "address-state": "address.state_province",
    "address-zip": "address.zip",
    "metadata": "custom",
}


def test_customers_with_awkward_data_import_without_errors(db, mongo_uri, stripe_sandbox, instance):
    for created, customer in enumerate(EDGE_CUSTOMERS):
        stripe_sandbox.state.add_customer("acct_1EdgeCases", created=1_700_000_000 + created,
                                          **customer)  # fmt: skip
    account_id = add_account(db, stripe_account="acct_1EdgeCases")
    existing = db[store.CONTACTS].insert_one(
        {"parent_account": account_id, "type": "person", "email": "mixed.case@example.com",
         "name": "Existing"}
    ).inserted_id  # fmt: skip
    import_id = add_request(db, account_id, mappings=EDGE_MAPPINGS)

    [run_request] = evaluate_sensor(instance, mongo_uri).run_requests
    result = billing_contact_import.execute_in_process(
        run_config=run_request.run_config,
        resources={
            "mongo": MongoResource(uri=mongo_uri),
            "stripe": StripeResource(api_base=stripe_sandbox.url),
        },
        instance=instance,
    )

    assert result.success
    document = import_result(db, import_id)
    assert (document["records_added"], document["records_updated"]) == (5, 1)
    assert document["import_errors_count"] == 0
    contacts = {c["stripe_customer_id"]: c for c in db[store.CONTACTS].find({})}
    unicode = contacts["cus_unicode"]
    assert unicode["name"] == "Zoë 山田 🚀 علي"
    assert unicode["email"] == "zoë.æøå@exämple.com"
    assert unicode["address"] == {"street": "Straße 1, Ünit ½", "city": "Zürich"}
    assert contacts["cus_long"]["name"] == LONG
    assert contacts["cus_long"]["address"]["city"] == "L" * 5000
    spaces = contacts["cus_spaces"]
    assert spaces["_id"] == existing, "matched trimmed and case-insensitively"
    assert spaces["old_field_values"]["email"] == "mixed.case@example.com"
    assert spaces["email_key"] == "mixed.case@example.com"
    assert contacts["cus_nulls"].get("address") in (None, {})
    assert "name" not in contacts["cus_nulls"] or contacts["cus_nulls"]["name"] is None
    assert contacts["cus_no_address"].get("address") in (None, {})
    assert len(contacts["cus_metadata"]["custom"]) == 50
    assert contacts["cus_metadata"]["custom"]["key_49"] == "49" * 500
