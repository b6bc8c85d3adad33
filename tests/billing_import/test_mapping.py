import copy
import pickle

import pytest

from stripe_crm_pipelines.billing_import.mapping import (
    JOB_OWNED_FIELDS,
    FieldMapping,
    MappingError,
    get_path,
    map_customer,
    normalize_email,
    old_field_values,
    parse_mappings,
    set_fields,
)
from stripe_crm_pipelines.billing_import.stripe_fields import customer_fields
from stripe_crm_pipelines.local.demo import DEMO_MAPPINGS

SEED_MAPPINGS = {
    "address-street": "address.street",
    "address-city": "address.city",
    "address-state": "address.state_province",
}
SEED_CUSTOMER = {
    "id": "cus_123",
    "email": "test@example.com",
    "name": "John Doe",
    "address": {"line1": "123 Main St", "city": "New York", "state": "NY"},
}


def full_address(**overrides):
    address = {
        "line1": "1 Main St",
        "line2": None,
        "city": "Springfield",
        "state": "IL",
        "postal_code": "62701",
        "country": "US",
    }
    return {**address, **overrides}


def test_seed_example():
    mapped = map_customer(SEED_CUSTOMER, parse_mappings(SEED_MAPPINGS))

    assert mapped == {
        "stripe_customer_id": "cus_123",
        "email": "test@example.com",
        "address": {"street": "123 Main St", "city": "New York", "state_province": "NY"},
    }


def test_hyphen_and_dot_separate_stripe_path_segments():
    customer = {"id": "cus_1", "metadata": {"plan": "pro"}, "shipping": {"name": "Ann"}}
    mappings = parse_mappings({"metadata-plan": "custom.plan", "shipping.name": "ship_to"})

    assert mappings[0].stripe_path == ("metadata", "plan")
    assert map_customer(customer, mappings) == {
        "stripe_customer_id": "cus_1",
        "email": None,
        "custom": {"plan": "pro"},
        "ship_to": "Ann",
    }


@pytest.mark.parametrize(
    ("line1", "line2", "street"),
    [
        ("1 Main St", "Apt 4", "1 Main St, Apt 4"),
        ("1 Main St", None, "1 Main St"),
        ("1 Main St", "", "1 Main St"),
        ("1 Main St", "   ", "1 Main St"),
        (None, "Apt 4", "Apt 4"),
    ],
)
def test_street_joins_line1_and_line2(line1, line2, street):
    customer = {"id": "cus_1", "address": full_address(line1=line1, line2=line2)}

    mapped = map_customer(customer, parse_mappings({"address-street": "street"}))

    assert mapped["street"] == street


def test_street_is_omitted_without_address_lines():
    customer = {"id": "cus_1", "address": full_address(line1=None)}

    assert "street" not in map_customer(customer, parse_mappings({"address-street": "street"}))


@pytest.mark.parametrize("prefix", ["address", "shipping-address", "shipping.address"])
@pytest.mark.parametrize(
    ("part", "expected"),
    [
        ("street", "1 Main St, Unit 2"),
        ("line1", "1 Main St"),
        ("line2", "Unit 2"),
        ("city", "Springfield"),
        ("state", "IL"),
        ("state_province", "IL"),
        ("zip", "62701"),
        ("postal_code", "62701"),
        ("country", "US"),
    ],
)
def test_address_aliases(prefix, part, expected):
    address = full_address(line2="Unit 2")
    customer = {"id": "cus_1", "address": address, "shipping": {"address": address}}

    mapped = map_customer(customer, parse_mappings({f"{prefix}-{part}": "target"}))

    assert mapped["target"] == expected


def test_plain_paths():
    customer = {
        "id": "cus_1",
        "name": "Ann Lee",
        "phone": "+15550100",
        "description": "VIP",
        "shipping": {"name": "Ann at work", "phone": "+15550199", "address": full_address()},
        "metadata": {"foo": "bar"},
    }
    mappings = parse_mappings(
        {
            "name": "name",
            "phone": "phone",
            "description": "notes",
            "shipping-name": "shipping.name",
            "shipping-phone": "shipping.phone",
            "metadata-foo": "custom.foo",
        }
    )

    mapped = map_customer(customer, mappings)

    assert mapped["name"] == "Ann Lee"
    assert mapped["phone"] == "+15550100"
    assert mapped["notes"] == "VIP"
    assert mapped["shipping"] == {"name": "Ann at work", "phone": "+15550199"}
    assert mapped["custom"] == {"foo": "bar"}


def test_missing_stripe_values_are_omitted():
    customer = {
        "id": "cus_1",
        "email": "a@example.com",
        "phone": None,
        "address": None,
        "metadata": {},
        "shipping": {"name": "Ann", "address": "not an object"},
    }
    mappings = parse_mappings(
        {
            "phone": "phone",
            "name": "name",
            "address-city": "address.city",
            "address-street": "address.street",
            "metadata-foo": "custom.foo",
            "shipping-address-city": "shipping.address.city",
            "shipping-name": "shipping.name",
        }
    )

    mapped = map_customer(customer, mappings)

    assert mapped == {
        "stripe_customer_id": "cus_1",
        "email": "a@example.com",
        "shipping": {"name": "Ann"},
    }
    # An absent value is not $set, so the contact keeps what it has.
    assert set(set_fields(mapped)) == {"stripe_customer_id", "email", "shipping.name"}


def test_email_is_trimmed_and_none_when_missing():
    mappings = parse_mappings({"name": "name"})

    assert map_customer({"id": "c", "email": "  Ann@Example.com \n"}, mappings)["email"] == (
        "Ann@Example.com"
    )
    assert map_customer({"id": "c"}, mappings)["email"] is None
    assert map_customer({"id": "c", "email": None}, mappings)["email"] is None
    assert map_customer({"id": "c", "email": "   "}, mappings)["email"] is None


def test_mapping_to_email_is_allowed_and_trimmed():
    customer = {"id": "cus_1", "email": None, "metadata": {"alt_email": " b@example.com "}}

    mapped = map_customer(customer, parse_mappings({"metadata-alt_email": "email"}))

    assert mapped["email"] == "b@example.com"


def test_customer_without_id_is_refused():
    with pytest.raises(ValueError, match="no id"):
        map_customer({"email": "a@example.com"}, ())


@pytest.mark.parametrize("raw", [None, {}])
def test_no_mappings_gives_only_id_and_email(raw):
    assert parse_mappings(raw) == ()
    assert map_customer(SEED_CUSTOMER, parse_mappings(raw)) == {
        "stripe_customer_id": "cus_123",
        "email": "test@example.com",
    }


def test_object_values_are_copied_not_shared():
    customer = {
        "id": "cus_1",
        "address": full_address(),
        "shipping": {"name": "Ann", "address": full_address()},
        "preferred_locales": ["en", "fr"],
    }
    mappings = parse_mappings(
        {"address": "address", "shipping": "delivery", "preferred_locales": "locales"}
    )

    mapped = map_customer(customer, mappings)
    mapped["address"]["city"] = "changed"
    mapped["delivery"]["address"]["city"] = "changed"
    mapped["locales"].append("de")

    assert customer["address"]["city"] == "Springfield"
    assert customer["shipping"]["address"]["city"] == "Springfield"
    assert customer["preferred_locales"] == ["en", "fr"]


def test_set_fields_flattens_mapped_paths():
    mapped = map_customer(SEED_CUSTOMER, parse_mappings(SEED_MAPPINGS))

    assert set_fields(mapped) == {
        "stripe_customer_id": "cus_123",
        "email": "test@example.com",
        "address.street": "123 Main St",
        "address.city": "New York",
        "address.state_province": "NY",
    }


def test_set_fields_sets_object_values_whole():
    # Stripe metadata keys may hold '.' or '$', so a mapped object is one $set path.
    customer = {"id": "cus_1", "metadata": {"a.b": "1", "$x": "2"}, "address": full_address()}
    mappings = parse_mappings({"metadata": "custom.stripe", "address": "address"})

    fields = set_fields(map_customer(customer, mappings))

    assert fields == {
        "stripe_customer_id": "cus_1",
        "email": None,
        "custom.stripe": {"a.b": "1", "$x": "2"},
        "address": full_address(),
    }


def test_old_field_values_nested_with_email():
    contact = {
        "_id": "x",
        "email": "old@example.com",
        "address": {"street": "9 Old Rd", "city": "Boston", "zip": "02110"},
        "custom": {"plan": "basic"},
        "phone": None,
    }
    mappings = parse_mappings(
        {
            **SEED_MAPPINGS,
            "metadata-plan": "custom.plan",
            "phone": "phone",
            "name": "first_name",
        }
    )

    previous = old_field_values(contact, mappings)

    assert previous == {
        "email": "old@example.com",
        "address": {"street": "9 Old Rd", "city": "Boston"},
        "custom": {"plan": "basic"},
    }


def test_old_field_values_copies_objects():
    contact = {"email": "a@example.com", "address": {"city": "Boston"}}

    previous = old_field_values(contact, parse_mappings({"address": "address"}))
    previous["address"]["city"] = "changed"

    assert contact["address"]["city"] == "Boston"


def test_old_field_values_without_mappings_is_the_email():
    assert old_field_values({"email": "a@example.com"}, ()) == {"email": "a@example.com"}
    assert old_field_values({}, ()) == {"email": None}


def test_unicode_and_long_values_pass_through():
    name = "Zoë Ñúñez 山田太郎 🚀" * 500
    customer = {"id": "cus_1", "name": name, "address": full_address(city="Zürich")}
    mappings = parse_mappings({"name": "name", "address-city": "ort.stadt"})

    mapped = map_customer(customer, mappings)

    assert mapped["name"] == name
    assert mapped["ort"] == {"stadt": "Zürich"}


def test_non_string_scalars_pass_through():
    customer = {"id": "cus_1", "balance": 0, "delinquent": False, "created": 1700000000}
    mappings = parse_mappings({"balance": "balance", "delinquent": "late", "created": "since"})

    assert map_customer(customer, mappings) == {
        "stripe_customer_id": "cus_1",
        "email": None,
        "balance": 0,
        "late": False,
        "since": 1700000000,
    }


def test_many_customers_map_consistently():
    # A functional check of the hot path over many customers; throughput is measured apart.
    mappings = parse_mappings(
        {
            **SEED_MAPPINGS,
            "address-zip": "address.postal_code",
            "name": "name",
            "phone": "phone",
            "shipping-address-city": "shipping.address.city",
            "metadata-plan": "custom.plan",
        }
    )
    customers = [
        {
            "id": f"cus_{i}",
            "email": f"user{i}@example.com",
            "name": f"User {i}",
            "phone": None if i % 2 else "+1555",
            "address": full_address(line2=f"Apt {i}" if i % 3 == 0 else None),
            "shipping": {"address": full_address(city=f"City {i}")} if i % 5 else None,
            "metadata": {"plan": "pro"} if i % 7 else {},
        }
        for i in range(2000)
    ]

    results = [set_fields(map_customer(customer, mappings)) for customer in customers]

    for i, fields in enumerate(results):
        assert fields["stripe_customer_id"] == f"cus_{i}"
        assert fields["address.street"] == (
            "1 Main St, Apt " + str(i) if i % 3 == 0 else "1 Main St"
        )
        assert ("phone" in fields) is (i % 2 == 0)
        assert fields.get("shipping.address.city") == (f"City {i}" if i % 5 else None)
        assert ("custom.plan" in fields) is (i % 7 != 0)


def test_mappings_survive_pickling():
    mappings = parse_mappings(SEED_MAPPINGS)

    for restored in (pickle.loads(pickle.dumps(mappings)), copy.deepcopy(mappings)):
        assert restored == mappings
        assert map_customer(SEED_CUSTOMER, restored) == map_customer(SEED_CUSTOMER, mappings)


def test_field_mapping_can_be_built_directly():
    mapping = FieldMapping("address-state", "address.state_province")

    assert mapping.crm_path == ("address", "state_province")
    assert mapping.read(SEED_CUSTOMER) == "NY"


@pytest.mark.parametrize("raw", [["address-city"], "address-city", 3, True])
def test_mappings_must_be_an_object(raw):
    with pytest.raises(MappingError, match=r"^mappings must be an object"):
        parse_mappings(raw)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"address-city": "$set"}, "mappings['address-city']: CRM field '$set' may not start"),
        ({"name": "$name.first"}, "mappings['name']: CRM field '$name.first' may not start"),
        ({"name": "person.$first"}, "mappings['name']: CRM field 'person.$first' has a segment"),
        ({"name": "a..b"}, "mappings['name']: CRM field 'a..b' has an empty segment"),
        ({"name": ".a"}, "mappings['name']: CRM field '.a' has an empty segment"),
        ({"name": "a."}, "mappings['name']: CRM field 'a.' has an empty segment"),
        ({"name": "a\x00b"}, "mappings['name']: CRM field 'a\\x00b' contains a NUL"),
        ({"address--city": "city"}, "mappings['address--city']: Stripe key has an empty"),
        ({"-city": "city"}, "mappings['-city']: Stripe key has an empty segment"),
        ({"city-": "city"}, "mappings['city-']: Stripe key has an empty segment"),
        ({"": "city"}, "mappings['']: Stripe key must be a non-empty string"),
        ({1: "city"}, "mappings[1]: Stripe key must be a non-empty string, got int"),
        ({"name": ""}, "mappings['name']: CRM field must be a non-empty string, got str"),
        ({"name": None}, "mappings['name']: CRM field must be a non-empty string, got null"),
        ({"name": 5}, "mappings['name']: CRM field must be a non-empty string, got int"),
        ({"name": ["a"]}, "mappings['name']: CRM field must be a non-empty string, got list"),
        ({"email": "email.primary"}, "mappings['email']: CRM field 'email.primary' is under"),
        (
            {"address-city": "city", "shipping-address-city": "city"},
            "mappings['shipping-address-city']: CRM field 'city' is already mapped from "
            "'address-city'",
        ),
        (
            {"address": "address", "address-city": "address.city"},
            "mappings['address-city']: CRM field 'address.city' overlaps 'address'",
        ),
        (
            {"address-city": "address.city", "name": "address"},
            "mappings['name']: CRM field 'address' overlaps 'address.city'",
        ),
    ],
)
def test_invalid_entries_are_named(raw, message):
    with pytest.raises(MappingError) as raised:
        parse_mappings(raw)

    assert str(raised.value).startswith(message)


@pytest.mark.parametrize("owned", sorted(JOB_OWNED_FIELDS))
def test_job_owned_fields_are_refused(owned):
    with pytest.raises(MappingError, match=rf"^mappings\['name'\]: CRM field '{owned}' is set by"):
        parse_mappings({"name": owned})
    with pytest.raises(
        MappingError, match=rf"^mappings\['name'\]: CRM field '{owned}\.x' is under"
    ):
        parse_mappings({"name": f"{owned}.x"})


def test_job_owned_fields():
    assert {
        "_id",
        "parent_account",
        "owner",
        "created_by",
        "type",
        "source",
        "stripe_customer_id",
        "old_field_values",
        "email_key",
        "stripe_deleted",
        "stripe_deleted_at",
    } == JOB_OWNED_FIELDS


def test_email_target_is_allowed():
    assert parse_mappings({"email": "email"})[0].crm_field == "email"


def test_mapping_error_is_a_value_error():
    assert issubclass(MappingError, ValueError)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("  Ann@Example.COM ", "ann@example.com"),
        ("ann@example.com", "ann@example.com"),
        ("\tBOB@EXAMPLE.ORG\n", "bob@example.org"),
        ("ÉLOÏSE@exemple.fr", "éloïse@exemple.fr"),
        ("", None),
        ("   ", None),
        (None, None),
        (42, None),
        (["a@example.com"], None),
    ],
)
def test_normalize_email(value, expected):
    assert normalize_email(value) == expected


@pytest.mark.parametrize(
    ("dotted", "expected"),
    [
        ("address.city", "Springfield"),
        ("address", full_address()),
        ("address.missing", None),
        ("address.city.deeper", None),
        ("nothing.here", None),
        ("name", "Ann"),
    ],
)
def test_get_path(dotted, expected):
    document = {"name": "Ann", "address": full_address()}

    assert get_path(document, dotted) == expected


@pytest.mark.parametrize(
    ("stripe_key", "reason", "suggestion"),
    [
        ("adress-city", "'adress' is not one of its fields", "address-city"),
        ("address-cty", "'cty' is not a field of 'address'", "address-city"),
        ("shiping.adress.city", "'shiping' is not one of its fields", "shipping-address-city"),
        ("metdata-plan", "'metdata' is not one of its fields", "metadata-plan"),
        ("Email", "'Email' is not one of its fields", "email"),
        ("email-domain", "'email' is a value, not an object", "email"),
    ],
)
def test_stripe_key_must_name_a_customer_field(stripe_key, reason, suggestion):
    with pytest.raises(MappingError) as raised:
        parse_mappings({"name": "name", stripe_key: "target"})

    assert str(raised.value) == (
        f"mappings[{stripe_key!r}]: Stripe key names no field of a Stripe customer ({reason}); "
        f"did you mean {suggestion!r}?"
    )
    parse_mappings({"name": "name", suggestion: "target"})


def test_unknown_stripe_key_without_a_near_field_has_no_suggestion():
    with pytest.raises(MappingError) as raised:
        parse_mappings({"zzzzqq": "target"})

    assert str(raised.value) == (
        "mappings['zzzzqq']: Stripe key names no field of a Stripe customer "
        "('zzzzqq' is not one of its fields)"
    )


@pytest.mark.parametrize(
    "stripe_key",
    [
        # Every key below metadata is free: Stripe metadata holds whatever the account put there.
        "metadata-plan",
        "metadata-any_key-even.deeper",
        # Fields of the SDK's Customer type and of its nested types.
        "id",
        "business_name",
        "individual_name",
        "preferred_locales",
        "invoice_settings-footer",
        "tax-location-country",
        "shipping-carrier",
        # A resource the customer refers to, one reference deep.
        "discount-source-coupon",
        # The CRM's names for address parts, on both addresses.
        "address-street",
        "address-zip",
        "address-state_province",
        "shipping-address-street",
        "shipping-address-zip",
        "shipping-address-state_province",
    ],
)
def test_customer_fields_and_metadata_keys_are_accepted(stripe_key):
    assert parse_mappings({stripe_key: "target"})[0].stripe_key == stripe_key


def test_customer_fields_come_from_the_stripe_sdk_types():
    """Every field the SDK declares on a customer is a valid key; a hand-kept list would drift."""
    import stripe

    declared = {
        name
        for name, annotation in stripe.Customer.__annotations__.items()
        if not str(annotation).startswith("typing.ClassVar")
    }

    assert set(customer_fields()) == declared
    assert set(customer_fields()["address"]) == {
        *stripe.Customer.Address.__annotations__,
        "street",
        "state_province",
        "zip",
    }
    assert customer_fields()["metadata"] is None


def test_demo_mappings_are_valid():
    assert len(parse_mappings(DEMO_MAPPINGS)) == len(DEMO_MAPPINGS)
