"""Queue a billing import of an account's Stripe customers, as the CRM would.

``queue`` validates the request exactly as the import run will (type, mappings, account, billing
Stripe key), inserts it as a pending ``queues`` document recorded as ``queued_by: cli``, and
prints its id. ``billing_import_sensor`` launches it within 30 seconds, with the same run tags and
one-import-per-Stripe-account limit as a request from the CRM. Follow it in the Dagster UI (Runs,
tag ``stripe_crm/import_id``) or with ``python -m stripe_crm_pipelines.history``.

The store is ``MONGODB_URI``, else, run in the project directory (where ``workspace.yaml`` is),
``make dev``'s store ``.local/store``; the first line on stderr says which.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import pymongo.errors

from stripe_crm_pipelines import cli_store, store
from stripe_crm_pipelines.billing_import import queue
from stripe_crm_pipelines.billing_import.new_requests import (
    QUEUED_BY_CLI,
    build_import_request,
)
from stripe_crm_pipelines.billing_import.requests import (
    CONTACT_TYPES,
    DELETION_POLICIES,
    InvalidImportRequest,
)

PROG = "python -m stripe_crm_pipelines.imports"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    queue = commands.add_parser(
        "queue",
        help="queue an import request for the sensor to run",
        description=__doc__.replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            f"  {PROG} queue --account 650000000000000000000001 --type contacts \\\n"
            "      --map name=name --map address-city=address.city --dry-run\n"
            f"  {PROG} queue --account 650000000000000000000001 --type companies \\\n"
            "      --no-new-contacts --max-customers 500\n"
            "\n"
            "user_id, parent_account and client_id come from the account: --user, else the\n"
            "account's owner, else its newest import request; parent_account defaults to the\n"
            "account itself.\n"
            "\n"
            "exit status: 0 queued (the id is printed), 1 the store cannot be read or written,\n"
            "2 invalid arguments or a request the import would refuse (nothing is queued)."
        ),
    )
    queue.add_argument(
        "--account", required=True, metavar="ID", help="the CRM account's id (_accounts._id)"
    )
    queue.add_argument(
        "--type",
        required=True,
        choices=list(CONTACT_TYPES),
        help="contacts: person contacts; companies: business contacts",
    )
    queue.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="STRIPE_KEY=CRM_FIELD",
        dest="mappings",
        help="copy a Stripe customer field onto a contact field, e.g. address-city=address.city "
        "(repeat for each field; metadata-* keys are free)",
    )
    queue.add_argument(
        "--no-new-contacts",
        action="store_true",
        help="only update contacts that exist; skip customers without one",
    )
    queue.add_argument(
        "--dry-run",
        action="store_true",
        help="fetch, map and match, but write no contact; the result previews the changes",
    )
    queue.add_argument(
        "--keep-in-sync",
        action="store_true",
        help="after the import, keep the contacts in step with Stripe's customer events",
    )
    queue.add_argument(
        "--deletion-policy",
        choices=DELETION_POLICIES,
        default="keep",
        help="with --keep-in-sync: what a customer deleted in Stripe does to its contact "
        "(default keep)",
    )
    queue.add_argument(
        "--max-customers",
        type=int,
        metavar="N",
        help="import at most N customers, newest first",
    )
    queue.add_argument(
        "--user", metavar="ID", help="the user queuing the import (owner of created contacts)"
    )
    queue.set_defaults(run=queue_import, command_parser=queue)
    return parser


def parse_map_options(options: Sequence[str]) -> dict[str, str]:
    """``STRIPE_KEY=CRM_FIELD`` options as a mappings object; ``ValueError`` naming a bad one."""
    mappings: dict[str, str] = {}
    for option in options:
        stripe_key, separator, crm_field = option.partition("=")
        stripe_key, crm_field = stripe_key.strip(), crm_field.strip()
        if not separator or not stripe_key or not crm_field:
            raise ValueError(f"--map {option!r}: expected STRIPE_KEY=CRM_FIELD")
        if stripe_key in mappings:
            raise ValueError(f"--map {option!r}: {stripe_key!r} is already mapped")
        mappings[stripe_key] = crm_field
    return mappings


def queue_import(args: argparse.Namespace) -> int:
    """``queue``: validate and insert one import request; print its id."""
    try:
        mappings = parse_map_options(args.mappings)
    except ValueError as error:
        args.command_parser.error(str(error))
    try:
        db = cli_store.open_store(cli_store.choose_store(), sys.stderr)
        if db is None:
            print("error: not queued: there is no store to queue it in", file=sys.stderr)
            return 1
        document = build_import_request(
            db,
            account_id=args.account,
            import_type=args.type,
            queued_by=QUEUED_BY_CLI,
            mappings=mappings,
            new_contact=not args.no_new_contacts,
            dry_run=args.dry_run,
            keep_in_sync=args.keep_in_sync,
            deletion_policy=args.deletion_policy,
            max_customers=args.max_customers,
            user_id=args.user,
        )
        import_id = queue.enqueue(db, document)
    except InvalidImportRequest as error:
        print(f"error: not queued: {error}", file=sys.stderr)
        return 2
    except store.StoreConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except pymongo.errors.PyMongoError as error:
        print(f"error: cannot queue the import: {error}", file=sys.stderr)
        return 1
    mode = "dry run" if document["dry_run"] else "import"
    print(
        f"Queued {mode} {import_id} of account {document['account_id']} "
        f"({document['type']}, {len(mappings)} mapped field(s)); billing_import_sensor "
        "launches it within 30 s.",
        file=sys.stderr,
    )
    print(import_id)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
