import pickle

import pytest
from bson import ObjectId

from stripe_crm_pipelines.billing_import.mapping import FieldMapping
from stripe_crm_pipelines.billing_import.requests import (
    CONTACT_TYPES,
    IMPORT_SOURCE,
    InvalidImportRequest,
    parse_import_request,
)

REQUEST_ID = ObjectId("65a000000000000000000001")
ACCOUNT_ID = ObjectId("65a000000000000000000002")
USER_ID = ObjectId("65a000000000000000000003")
PARENT_ID = ObjectId("65a000000000000000000004")
CLIENT_ID = ObjectId("65a000000000000000000005")
_DROP = object()


def seed_request(**changes):
    """A request as the CRM writes it (seed fields only); ``changes`` set or, as None, drop."""
    document = {
        "_id": REQUEST_ID,
        "status": "pending",
        "source": IMPORT_SOURCE,
        "in_progress": False,
        "type": "contacts",
        "account_id": ACCOUNT_ID,
        "user_id": USER_ID,
        "parent_account": PARENT_ID,
        "client_id": CLIENT_ID,
        "mappings": {"address-city": "address.city"},
        "new_contact": True,
        "createdAt": "2024-01-01T00:00:00Z",
    }
    for name, value in changes.items():
        if value is _DROP:
            document.pop(name, None)
        else:
            document[name] = value
    return document


def test_seed_request_parses():
    request = parse_import_request(seed_request())

    assert request.id == REQUEST_ID
    assert request.account_id == ACCOUNT_ID
    assert request.user_id == USER_ID
    assert request.parent_account == PARENT_ID
    assert request.client_id == CLIENT_ID
    assert request.import_type == "contacts"
    assert request.contact_type == "person"
    assert request.mappings == (FieldMapping("address-city", "address.city"),)
    assert request.new_contact is True
    assert request.max_customers is None
    assert request.attempts == 0


def test_project_fields_are_read():
    request = parse_import_request(
        seed_request(
            type="companies",
            max_customers=250,
            attempts=2,
            checkpoint={"cursor": "cus_99"},
            claimed_by="run-1",
        )
    )

    assert request.contact_type == "business"
    assert request.max_customers == 250
    assert request.attempts == 2


def test_minimal_request_parses():
    document = {
        "_id": REQUEST_ID,
        "type": "companies",
        "account_id": ACCOUNT_ID,
        "user_id": USER_ID,
    }

    request = parse_import_request(document)

    assert request.parent_account is None
    assert request.client_id is None
    assert request.mappings == ()
    assert request.new_contact is False


def test_object_ids_given_as_strings():
    request = parse_import_request(
        seed_request(
            _id=str(REQUEST_ID),
            account_id=str(ACCOUNT_ID),
            user_id=str(USER_ID),
            parent_account=str(PARENT_ID),
            client_id=str(CLIENT_ID),
        )
    )

    assert request.id == REQUEST_ID
    assert request.account_id == ACCOUNT_ID
    assert isinstance(request.account_id, ObjectId)
    assert request.user_id == USER_ID
    assert request.parent_account == PARENT_ID
    assert request.client_id == CLIENT_ID


def test_whole_number_doubles_are_accepted():
    request = parse_import_request(seed_request(max_customers=100.0, attempts=1.0))

    assert request.max_customers == 100
    assert request.attempts == 1


def test_new_contact_false_and_missing():
    assert parse_import_request(seed_request(new_contact=False)).new_contact is False
    assert parse_import_request(seed_request(new_contact=_DROP)).new_contact is False
    assert parse_import_request(seed_request(new_contact=None)).new_contact is False


def test_dry_run_is_read_and_false_when_missing():
    assert parse_import_request(seed_request(dry_run=True)).dry_run is True
    assert parse_import_request(seed_request(dry_run=False)).dry_run is False
    assert parse_import_request(seed_request()).dry_run is False


def test_request_pickles():
    request = parse_import_request(seed_request())

    assert pickle.loads(pickle.dumps(request)) == request


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"_id": _DROP}, "_id: missing"),
        ({"account_id": _DROP}, "account_id: missing"),
        ({"account_id": None}, "account_id: missing"),
        ({"account_id": ""}, "account_id: missing"),
        ({"account_id": "123"}, "account_id: '123' is not an ObjectId"),
        ({"account_id": "zz" * 12}, "account_id: 'zzzzzzzzzzzzzzzzzzzzzzzz' is not an ObjectId"),
        ({"account_id": 12345}, "account_id: int is not an ObjectId"),
        ({"user_id": _DROP}, "user_id: missing"),
        ({"user_id": "not-an-id"}, "user_id: 'not-an-id' is not an ObjectId"),
        ({"user_id": {"$oid": "x"}}, "user_id: dict is not an ObjectId"),
        ({"parent_account": "nope"}, "parent_account: 'nope' is not an ObjectId"),
        ({"client_id": 7}, "client_id: int is not an ObjectId"),
        ({"type": "people"}, "type: 'people' is not one of 'contacts', 'companies'"),
        ({"type": _DROP}, "type: missing is not one of 'contacts', 'companies'"),
        ({"type": "person"}, "type: 'person' is not one of 'contacts', 'companies'"),
        ({"type": ["contacts"]}, "type: ['contacts'] is not one of 'contacts', 'companies'"),
        ({"source": "csv-contacts"}, "source: 'csv-contacts' is not 'billing-contacts'"),
        ({"mappings": ["address-city"]}, "mappings must be an object"),
        ({"mappings": "address-city"}, "mappings must be an object"),
        (
            {"mappings": {"name": "parent_account"}},
            "mappings['name']: CRM field 'parent_account' is set by the import itself",
        ),
        (
            {"mappings": {"name": "old_field_values.name"}},
            "mappings['name']: CRM field 'old_field_values.name' is under 'old_field_values'",
        ),
        (
            {"mappings": {"address-city": "$set"}},
            "mappings['address-city']: CRM field '$set' may not start with '$'",
        ),
        ({"new_contact": "yes"}, "new_contact: must be true or false, got 'yes'"),
        ({"new_contact": 1}, "new_contact: must be true or false, got 1"),
        ({"dry_run": "true"}, "dry_run: must be true or false, got 'true'"),
        ({"max_customers": 0}, "max_customers: must be a positive integer, got 0"),
        ({"max_customers": -5}, "max_customers: must be a positive integer, got -5"),
        ({"max_customers": "10"}, "max_customers: must be a positive integer, got '10'"),
        ({"max_customers": 2.5}, "max_customers: must be a positive integer, got 2.5"),
        ({"max_customers": True}, "max_customers: must be a positive integer, got True"),
        ({"attempts": -1}, "attempts: must be a non-negative integer, got -1"),
        ({"mappings": {"adress-city": "address.city"}}, "mappings['adress-city']: Stripe key"),
        ({"dry_run": "true"}, "dry_run: must be true or false, got 'true'"),
        ({"keep_in_sync": 1}, "keep_in_sync: must be true or false, got 1"),
        ({"dry_run": True, "keep_in_sync": True}, "keep_in_sync: a dry run writes nothing"),
        (
            {"deletion_policy": "delete"},
            "deletion_policy: 'delete' is not one of 'keep', 'archive'",
        ),
        ({"deletion_policy": "archive"}, "deletion_policy: 'archive' applies to deletions seen"),
        ({"queued_by": ""}, "queued_by: must be a non-empty string, got ''"),
        ({"reason": 3}, "reason: must be a non-empty string, got 3"),
    ],
)
def test_malformed_requests_name_the_field(changes, message):
    with pytest.raises(InvalidImportRequest) as raised:
        parse_import_request(seed_request(**changes))

    assert str(raised.value).startswith(message)


def test_mapping_errors_keep_their_message():
    with pytest.raises(InvalidImportRequest) as raised:
        parse_import_request(seed_request(mappings={"address-city": "$set"}))

    assert str(raised.value) == "mappings['address-city']: CRM field '$set' may not start with '$'"


def test_request_must_be_an_object():
    with pytest.raises(InvalidImportRequest, match="import request must be an object"):
        parse_import_request(["not", "a", "document"])


def test_contact_types():
    assert CONTACT_TYPES == {"contacts": "person", "companies": "business"}
    assert IMPORT_SOURCE == "billing-contacts"
    assert issubclass(InvalidImportRequest, ValueError)


def test_optional_controls_default_off():
    request = parse_import_request(seed_request())

    assert request.dry_run is False
    assert request.keep_in_sync is False
    assert request.deletion_policy == "keep"
    assert request.queued_by is None
    assert request.reason is None


def test_optional_controls_are_read():
    request = parse_import_request(
        seed_request(keep_in_sync=True, deletion_policy="archive", queued_by="cli", reason="resync")
    )
    dry = parse_import_request(seed_request(dry_run=True, deletion_policy="keep"))

    assert (request.keep_in_sync, request.deletion_policy) == (True, "archive")
    assert (request.queued_by, request.reason) == ("cli", "resync")
    assert (dry.dry_run, dry.keep_in_sync, dry.deletion_policy) == (True, False, "keep")
