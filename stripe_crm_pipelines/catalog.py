"""The CRM contacts in Dagster's asset catalog: one asset, a partition per CRM account.

``crm_contacts`` is an external asset (the contacts live in MongoDB; runs write them, Dagster
does not compute them) partitioned by account id (:data:`ACCOUNT_PARTITIONS`, dynamic). Every
full import and every sync records, for its account's partition, a materialization with its
counts and the evaluations of three asset checks (:func:`account_events`), so the asset page
lists each account with its last import, last sync and whether its contacts are sound:

* ``unique_stripe_customer_ids``: no two contacts of an account and type share a Stripe id
  (both types are evaluated together, so a run of one type never hides the other's problem);
* ``unique_emails``: no two share a normalised email;
* ``fetched_customers_have_contacts``: every customer the run wrote has a contact.

Sensors add an account's partition when they first launch a run for it
(:func:`add_account_partitions`); runs add it too if missing (:func:`ensure_account_partition`).
The uniqueness checks can also be executed from the asset page (``crm_contacts_checks``): they
are evaluated then for every account partition.
"""

import warnings
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from bson import ObjectId
from dagster import (
    AddDynamicPartitionsRequest,
    AssetCheckEvaluation,
    AssetCheckExecutionContext,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    AssetMaterialization,
    AssetSpec,
    DagsterInstance,
    DynamicPartitionsDefinition,
    MetadataValue,
    PreviewWarning,
    multi_asset_check,
)

from stripe_crm_pipelines.contact_health import (
    HealthCheck,
    fetched_customers_check,
    uniqueness_checks,
)
from stripe_crm_pipelines.resources import MongoResource

CRM_CONTACTS = AssetKey("crm_contacts")
ACCOUNT_PARTITIONS = DynamicPartitionsDefinition(name="crm_accounts")
"""One partition per CRM account id (the ``account_id`` of its requests)."""

UNIQUE_STRIPE_IDS = "unique_stripe_customer_ids"
UNIQUE_EMAILS = "unique_emails"
FETCHED_HAVE_CONTACTS = "fetched_customers_have_contacts"

crm_contacts = AssetSpec(
    key=CRM_CONTACTS,
    partitions_def=ACCOUNT_PARTITIONS,
    description="The CRM contacts (person and business) of each account that Stripe customers "
    "are imported into and kept in step with, one partition per CRM account. Written by "
    "billing_contact_import (full imports) and billing_contact_sync (incremental syncs).",
    group_name="crm",
    kinds={"mongodb"},
)

# Partitioned checks are a preview feature of Dagster 1.13; the catalog relies on them knowingly,
# so their construction does not warn in every process that loads the definitions.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", PreviewWarning)
    CHECK_SPECS = [
        AssetCheckSpec(
            UNIQUE_STRIPE_IDS,
            asset=CRM_CONTACTS,
            partitions_def=ACCOUNT_PARTITIONS,
            description="No two contacts of the account and type share a Stripe customer id.",
        ),
        AssetCheckSpec(
            UNIQUE_EMAILS,
            asset=CRM_CONTACTS,
            partitions_def=ACCOUNT_PARTITIONS,
            description="No two contacts of the account and type share a normalised email.",
        ),
        AssetCheckSpec(
            FETCHED_HAVE_CONTACTS,
            asset=CRM_CONTACTS,
            partitions_def=ACCOUNT_PARTITIONS,
            description="Every Stripe customer the last import or sync wrote has a contact "
            "(evaluated after each run).",
        ),
    ]


def account_events(
    db,
    account_id: ObjectId,
    contact_type: str,
    *,
    description: str,
    metadata: Mapping[str, Any],
    written_customer_ids: Collection[str] | None = None,
    uniqueness: list[HealthCheck] | None = None,
) -> list[AssetMaterialization | AssetCheckEvaluation]:
    """What a run that wrote an account's contacts records in the catalog: the partition's
    materialization with ``metadata``, then the check evaluations.

    ``written_customer_ids`` are the customers the run expects a contact for (written, not
    skipped); None leaves out that check. ``uniqueness``: the account's uniqueness checks when
    already evaluated (:func:`contact_health.uniqueness_checks_by_account`, for many accounts at
    once); None evaluates them here. Log each event with ``context.log_event``.
    """
    partition = str(account_id)
    events: list[AssetMaterialization | AssetCheckEvaluation] = [
        AssetMaterialization(
            asset_key=CRM_CONTACTS,
            partition=partition,
            description=description,
            metadata={**metadata, "contact_type": MetadataValue.text(contact_type)},
        )
    ]
    checks = list(uniqueness) if uniqueness is not None else uniqueness_checks(db, account_id)
    if written_customer_ids is not None:
        checks.append(fetched_customers_check(db, account_id, contact_type, written_customer_ids))
    events.extend(_evaluation(check, partition) for check in checks)
    return events


def add_account_partitions(account_ids: Iterable[ObjectId | str]) -> AddDynamicPartitionsRequest:
    """The sensor request that adds these accounts' partitions (existing ones are kept)."""
    return ACCOUNT_PARTITIONS.build_add_request(sorted({str(account) for account in account_ids}))


def ensure_account_partition(instance: DagsterInstance, account_id: ObjectId | str) -> None:
    """Add the account's partition if a run writes it before any sensor has."""
    key = str(account_id)
    if not instance.has_dynamic_partition(ACCOUNT_PARTITIONS.name, key):
        instance.add_dynamic_partitions(ACCOUNT_PARTITIONS.name, [key])


def ensure_account_partitions(
    instance: DagsterInstance, account_ids: Iterable[ObjectId | str]
) -> None:
    """:func:`ensure_account_partition` for many accounts, with one read and at most one write."""
    wanted = {str(account) for account in account_ids}
    missing = wanted - set(instance.get_dynamic_partitions(ACCOUNT_PARTITIONS.name))
    if missing:
        instance.add_dynamic_partitions(ACCOUNT_PARTITIONS.name, sorted(missing))


@multi_asset_check(
    specs=CHECK_SPECS,
    can_subset=True,
    description="Evaluates the uniqueness checks of every account's contacts now, for each "
    "account partition. The fetched-customers check is evaluated by imports and syncs only.",
)
def crm_contacts_checks(context: AssetCheckExecutionContext, mongo: MongoResource):
    db = mongo.database()
    selected = {key.name for key in context.selected_asset_check_keys}
    for partition in context.instance.get_dynamic_partitions(ACCOUNT_PARTITIONS.name):
        if not ObjectId.is_valid(partition):
            continue
        for check in uniqueness_checks(db, ObjectId(partition)):
            if check.name in selected:
                context.op_execution_context.log_event(_evaluation(check, partition))
    yield from ()


def _evaluation(check: HealthCheck, partition: str) -> AssetCheckEvaluation:
    metadata: dict[str, Any] = {"count": MetadataValue.int(check.count)}
    if check.examples:
        metadata["examples"] = MetadataValue.json(_json_safe(check.examples))
    return AssetCheckEvaluation(
        asset_key=CRM_CONTACTS,
        check_name=check.name,
        passed=check.passed,
        partition=partition,
        description=check.description,
        metadata=metadata,
        severity=AssetCheckSeverity.ERROR,
    )


def _json_safe(values: Sequence[Any]) -> list[Any]:
    return [
        {key: str(value) for key, value in item.items()} if isinstance(item, dict) else str(item)
        for item in values
    ]
