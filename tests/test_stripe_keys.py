import mongomock
import pytest
from bson import ObjectId

from stripe_crm_pipelines.stripe_keys import (
    StripeCredentials,
    StripeKeyError,
    billing_key_filter,
    load_billing_credentials,
    parse_stripe_credentials,
)

ACCOUNT_ID = ObjectId("65a000000000000000000002")
OTHER_ACCOUNT_ID = ObjectId("65a000000000000000000003")
SECRET = "sk_test_51SuperSecretValue0123456789"
_DROP = object()


def stripe_key(**token_changes):
    token = {"access_token": SECRET, "stripe_user_id": "acct_1ABC", "scope": "read_write"}
    for name, value in token_changes.items():
        if value is _DROP:
            token.pop(name)
        else:
            token[name] = value
    return {"account_id": ACCOUNT_ID, "connected_apps": ["billing"], "token": token}


def test_stripe_credentials_parse():
    credentials = parse_stripe_credentials(stripe_key(), ACCOUNT_ID)

    assert credentials == StripeCredentials(secret_key=SECRET, stripe_account="acct_1ABC")


def test_stripe_credentials_are_trimmed():
    credentials = parse_stripe_credentials(
        stripe_key(access_token=f" {SECRET}\n", stripe_user_id=" acct_1ABC "), ACCOUNT_ID
    )

    assert credentials.secret_key == SECRET
    assert credentials.stripe_account == "acct_1ABC"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (None, f"account {ACCOUNT_ID} has no Stripe key connected for billing"),
        ({"account_id": ACCOUNT_ID}, f"stripe_key of account {ACCOUNT_ID}: token is missing"),
        (
            {"account_id": ACCOUNT_ID, "token": SECRET},
            f"stripe_key of account {ACCOUNT_ID}: token must be an object, got str",
        ),
        (stripe_key(access_token=_DROP), "token.access_token is missing"),
        (stripe_key(access_token=None), "token.access_token is missing"),
        (stripe_key(access_token=""), "token.access_token is empty"),
        (stripe_key(access_token=12345), "token.access_token must be a string, got int"),
        (stripe_key(stripe_user_id=_DROP), "token.stripe_user_id is missing"),
        (stripe_key(stripe_user_id="  "), "token.stripe_user_id is empty"),
    ],
)
def test_unusable_stripe_keys_name_the_field(document, message):
    with pytest.raises(StripeKeyError) as raised:
        parse_stripe_credentials(document, ACCOUNT_ID)

    assert message in str(raised.value)
    assert SECRET not in str(raised.value)
    assert SECRET not in repr(raised.value)


def test_secret_never_in_repr_or_str():
    credentials = parse_stripe_credentials(stripe_key(), ACCOUNT_ID)

    for text in (repr(credentials), str(credentials), f"{credentials}", f"{credentials!r}"):
        assert SECRET not in text
        assert "sk_test" not in text
        assert "acct_1ABC" in text
    assert SECRET not in repr([credentials])


def test_billing_key_filter():
    assert billing_key_filter(ACCOUNT_ID) == {"account_id": ACCOUNT_ID, "connected_apps": "billing"}


@pytest.mark.parametrize("connected_apps", ["billing", ["crm", "billing"]])
def test_billing_key_filter_matches_string_or_array(connected_apps):
    keys = mongomock.MongoClient().db.stripe_key
    keys.insert_many(
        [
            {"account_id": ACCOUNT_ID, "connected_apps": connected_apps, "token": {"n": 1}},
            {"account_id": ACCOUNT_ID, "connected_apps": ["crm"], "token": {"n": 2}},
            {"account_id": OTHER_ACCOUNT_ID, "connected_apps": "billing", "token": {"n": 3}},
        ]
    )

    found = list(keys.find(billing_key_filter(ACCOUNT_ID)))

    assert [document["token"] for document in found] == [{"n": 1}]


def test_load_billing_credentials_reads_the_billing_key_of_the_account():
    db = mongomock.MongoClient().db
    db.stripe_key.insert_many(
        [
            {**stripe_key(access_token="sk_test_other"), "connected_apps": ["crm"]},
            stripe_key(),
        ]
    )

    assert load_billing_credentials(db, ACCOUNT_ID).secret_key == SECRET
    with pytest.raises(StripeKeyError, match="has no Stripe key connected for billing"):
        load_billing_credentials(db, OTHER_ACCOUNT_ID)
