"""Customer records of the sandbox and deterministic generation of realistic ones.

Customers are kept compactly (a slotted record with tuple addresses) so that an account can
hold 100,000 of them; :meth:`CustomerRecord.to_api` renders Stripe's JSON shape.
"""

from __future__ import annotations

import functools
import gc
import random
import string
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

T = TypeVar("T")

_ID_ALPHABET = string.ascii_letters + string.digits
# Byte-to-character tables: ids and digits are drawn as random bytes and translated at once.
_ID_TABLE = bytes(ord(_ID_ALPHABET[b % 62]) for b in range(256))
_DIGIT_TABLE = bytes(ord("0") + b % 10 for b in range(256))

# Seeded customers are created over the five years before this instant (2026-01-01 UTC), a
# fixed anchor so that the same seed gives the same customers whenever it runs.
SEED_CREATED_END = 1_767_225_600
SEED_CREATED_SPAN = 5 * 365 * 24 * 3600


def new_id(prefix: str, rng: random.Random, length: int = 14) -> str:
    """A Stripe-style object id: ``prefix`` + ``_`` + ``length`` base62 characters."""
    return f"{prefix}_{rng.randbytes(length).translate(_ID_TABLE).decode()}"


class Address(NamedTuple):
    """A postal address; any part may be missing (``None``), as in Stripe."""

    line1: str | None = None
    line2: str | None = None
    city: str | None = None
    state: str | None = None
    postal_code: str | None = None
    country: str | None = None

    def to_api(self) -> dict[str, str | None]:
        """Stripe's ``address`` hash."""
        return {
            "city": self.city,
            "country": self.country,
            "line1": self.line1,
            "line2": self.line2,
            "postal_code": self.postal_code,
            "state": self.state,
        }


class Shipping(NamedTuple):
    """A customer's shipping details."""

    name: str | None
    phone: str | None
    address: Address

    def to_api(self) -> dict[str, Any]:
        """Stripe's ``shipping`` hash."""
        return {"address": self.address.to_api(), "name": self.name, "phone": self.phone}


@dataclass(slots=True)
class CustomerRecord:
    """One Stripe customer. ``seq`` orders customers created in the same second;
    ``indexed_from`` (epoch seconds) is when it was written through the API, the start of its
    search index delay (0 for seeded customers: searchable at once)."""

    id: str
    created: int
    email: str | None = None
    name: str | None = None
    phone: str | None = None
    description: str | None = None
    address: Address | None = None
    shipping: Shipping | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    currency: str | None = None
    preferred_locales: tuple[str, ...] = ()
    invoice_prefix: str = ""
    next_invoice_sequence: int = 1
    balance: int = 0
    seq: int = 0
    indexed_from: float = 0.0

    def to_api(self) -> dict[str, Any]:
        """The customer as Stripe's API returns it."""
        return {
            "id": self.id,
            "object": "customer",
            "address": self.address.to_api() if self.address else None,
            "balance": self.balance,
            "created": self.created,
            "currency": self.currency,
            "default_source": None,
            "delinquent": False,
            "description": self.description,
            "discount": None,
            "email": self.email,
            "invoice_prefix": self.invoice_prefix,
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": None,
                "footer": None,
                "rendering_options": None,
            },
            "livemode": False,
            "metadata": dict(self.metadata),
            "name": self.name,
            "next_invoice_sequence": self.next_invoice_sequence,
            "phone": self.phone,
            "preferred_locales": list(self.preferred_locales),
            "shipping": self.shipping.to_api() if self.shipping else None,
            "tax_exempt": "none",
            "test_clock": None,
        }


_FIRST_NAMES = (
    "James", "Mary", "John", "Patricia", "Robert", "Jennifer", "Michael", "Linda", "David",
    "Elizabeth", "William", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas", "Sarah",
    "Carlos", "María", "Wei", "Yuki", "Amara", "Oluwaseun", "Priya", "Arjun", "Chloé", "Léa",
    "Lukas", "Sofia", "Mateo", "Ingrid", "Siobhan", "Aoife", "Dmitri", "Fatima", "Noah", "Emma",
    "Liam", "Olivia",
)  # fmt: skip
_LAST_NAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Taylor", "Moore",
    "Jackson", "Martin", "Lee", "Nguyen", "Müller", "Schmidt", "Dubois", "Rossi", "Tanaka",
    "Kowalski", "O'Brien", "Murphy", "Okafor", "Patel", "Singh", "Kim", "Chen", "Silva", "Novak",
    "Larsen", "Byrne", "Costa", "Ivanova",
)  # fmt: skip
_COMPANY_WORDS = (
    "Acme", "Globex", "Initech", "Umbrella", "Stark", "Wayne", "Hooli", "Vandelay", "Soylent",
    "Tyrell", "Cyberdyne", "Wonka", "Gringotts", "Monarch", "Aperture", "Blue Sun", "Oceanic",
    "Pied Piper", "Massive Dynamic", "Dunder Mifflin",
)  # fmt: skip
_COMPANY_SUFFIXES = ("Inc.", "LLC", "Ltd", "GmbH", "& Co", "Corp", "S.A.", "Pty Ltd")
_DOMAINS = ("example.com", "example.org", "example.net", "mail.test", "inbox.test", "corp.test")
_STREETS = (
    "Main St", "Market Street", "Elm Avenue", "Oak Lane", "High Street", "Baker Street",
    "Rue de Rivoli", "Unter den Linden", "King St W", "George St", "Maple Drive", "Mission St",
    "Via Roma", "Calle Mayor", "Sunset Blvd", "Church Road",
)  # fmt: skip
_LINE2 = ("Apt 4B", "Suite 200", "Floor 3", "Unit 12", "Building C", "c/o Accounts Payable")
# (city, state or None, postal code pattern or None, country, phone country code)
_Place = tuple[str, str | None, str | None, str, str]
_PLACES: tuple[_Place, ...] = (
    ("San Francisco", "CA", "941##", "US", "1"),
    ("New York", "NY", "100##", "US", "1"),
    ("Austin", "TX", "787##", "US", "1"),
    ("Chicago", "IL", "606##", "US", "1"),
    ("Seattle", "WA", "981##", "US", "1"),
    ("Boston", "MA", "021##", "US", "1"),
    ("Toronto", "ON", "M5V #T#", "CA", "1"),
    ("London", None, "EC1A #BB", "GB", "44"),
    ("Manchester", None, "M# 1AE", "GB", "44"),
    ("Berlin", None, "101##", "DE", "49"),
    ("München", "BY", "803##", "DE", "49"),
    ("Paris", None, "750##", "FR", "33"),
    ("Sydney", "NSW", "20##", "AU", "61"),
    ("Dublin", None, None, "IE", "353"),
    ("Tokyo", "Tokyo", "100-00##", "JP", "81"),
    ("São Paulo", "SP", "01310-###", "BR", "55"),
)  # fmt: skip
_CURRENCY_BY_COUNTRY = {"US": "usd", "CA": "cad", "GB": "gbp", "AU": "aud", "JP": "jpy"}
_DESCRIPTIONS = (
    "VIP customer", "Migrated from legacy billing", "Net 30 terms", "Annual plan",
    "Referred by partner", "Do not contact before renewal",
)  # fmt: skip
_SEGMENTS = ("smb", "enterprise", "startup", "nonprofit")
_LOCALES = (("en",), ("fr",), ("de",), ("es", "en"), ("ja",))


class CustomerGenerator:
    """Deterministic generator of realistic customers for one seed and account.

    The mix: ~8% without email, ~12% mixed-case emails (``John.Doe7@Example.COM``), ~4% with
    surrounding spaces, ~5% reusing another customer's email (half in upper case), ~15%
    companies, ~8% without name, ~30% without phone, ~25% without address (some addresses have
    only a country and postal code; line2, state and postal code are sometimes missing), ~25%
    with shipping, metadata on about a third. ``created`` values are distinct and spread over the
    five years before 2026.
    """

    def __init__(self, seed: int, account: str | None) -> None:
        self.rng = random.Random(f"stripe-sandbox:{seed}:{account or 'platform'}")
        self.random = self.rng.random
        self.emails: list[str] = []

    def generate(self, count: int) -> list[CustomerRecord]:
        """``count`` customers, oldest first, with distinct ids and ``created`` values."""
        start = SEED_CREATED_END - SEED_CREATED_SPAN
        created_values = sorted(self.rng.sample(range(start, SEED_CREATED_END), count))
        ids: set[str] = set()
        customers = []
        # Only acyclic objects are made here: pausing the cyclic garbage collector, which would
        # rescan the growing list again and again, keeps large seeds fast.
        collecting = gc.isenabled()
        gc.disable()
        try:
            for index, created in enumerate(created_values):
                customer_id = new_id("cus", self.rng)
                while customer_id in ids:
                    customer_id = new_id("cus", self.rng)
                ids.add(customer_id)
                customers.append(self._customer(index, customer_id, created))
        finally:
            if collecting:
                gc.enable()
        return customers

    def _pick(self, options: Sequence[T]) -> T:
        return options[int(self.random() * len(options))]

    def _customer(self, index: int, customer_id: str, created: int) -> CustomerRecord:
        random, pick = self.random, self._pick
        first, last = pick(_FIRST_NAMES), pick(_LAST_NAMES)
        roll = random()
        if roll < 0.15:
            company = f"{pick(_COMPANY_WORDS)} {pick(_COMPANY_SUFFIXES)}"
            name: str | None = company
            local, domain = f"billing{index}", _slug(company) + ".example.com"
        else:
            name = None if roll < 0.23 else f"{first} {last}"
            local, domain = f"{_slug(first)}.{_slug(last)}{index}", pick(_DOMAINS)
        place = pick(_PLACES)
        address = self._address(place) if random() < 0.75 else None
        phone = self._phone(place[4]) if random() < 0.7 else None
        shipping = None
        if random() < 0.25:
            shipping_address = address if address and random() < 0.6 else self._address(place)
            shipping = Shipping(
                name or f"{first} {last}", phone if random() < 0.5 else None, shipping_address
            )
        return CustomerRecord(
            id=customer_id,
            created=created,
            email=self._email(local, domain, first, last, index),
            name=name,
            phone=phone,
            description=pick(_DESCRIPTIONS) if random() < 0.2 else None,
            address=address,
            shipping=shipping,
            metadata=self._metadata(index),
            currency=_CURRENCY_BY_COUNTRY.get(place[3], "eur") if random() < 0.3 else None,
            preferred_locales=pick(_LOCALES) if random() < 0.1 else (),
            invoice_prefix=self.rng.randbytes(4).hex().upper(),
        )

    def _email(self, local: str, domain: str, first: str, last: str, index: int) -> str | None:
        roll = self.random()
        if roll < 0.08:
            return None
        if roll < 0.13 and self.emails:
            original = self._pick(self.emails)
            return original if self.random() < 0.5 else original.upper()
        variant = self.random()
        if variant < 0.12:
            domain_name, tld = domain.rsplit(".", 1)
            local = f"{_slug(first).title()}.{_slug(last).title()}{index}"
            domain = f"{domain_name.title()}.{tld.upper()}"
        email = f"{local}@{domain}"
        self.emails.append(email)
        return f"  {email} " if 0.12 <= variant < 0.16 else email

    def _address(self, place: _Place) -> Address:
        random = self.random
        city, state, postal_pattern, country, _ = place
        postal_code = self._fill_digits(postal_pattern) if postal_pattern else None
        if random() < 0.05:
            return Address(postal_code=postal_code, country=country)
        return Address(
            line1=f"{int(random() * 9999) + 1} {self._pick(_STREETS)}",
            line2=self._pick(_LINE2) if random() < 0.3 else None,
            city=city,
            state=state,
            postal_code=None if random() < 0.03 else postal_code,
            country=country,
        )

    def _phone(self, country_code: str) -> str:
        digits = self._fill_digits("##########")
        style = self.random()
        if country_code == "1" and style < 0.3:
            return f"({digits[:3]}) {digits[3:6]}-{digits[6:]}"
        if style < 0.6:
            return f"+{country_code}{digits}"
        return f"+{country_code} {digits[:3]} {digits[3:6]} {digits[6:]}"

    def _metadata(self, index: int) -> dict[str, str]:
        metadata: dict[str, str] = {}
        if self.random() < 0.3:
            metadata["crm_id"] = f"C-{100000 + index}"
            if self.random() < 0.4:
                metadata["segment"] = self._pick(_SEGMENTS)
        if self.random() < 0.05:
            metadata["source"] = "legacy-import"
        return metadata

    def _fill_digits(self, pattern: str) -> str:
        """``pattern`` with each ``#`` replaced by a random digit."""
        digits = iter(self.rng.randbytes(pattern.count("#")).translate(_DIGIT_TABLE).decode())
        return "".join(next(digits) if c == "#" else c for c in pattern)


@functools.cache
def _slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(c for c in ascii_text.lower() if c.isalnum()) or "customer"
