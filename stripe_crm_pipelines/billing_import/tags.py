"""Run tag keys of billing imports and syncs: searchable in the runs list, and the concurrency
key.

``dagster.yaml`` limits runs per value of :data:`STRIPE_ACCOUNT` to one, imports and syncs
together: Stripe rate-limits per account, and two runs of one account would race on the same
contacts.
"""

IMPORT_ID = "stripe_crm/import_id"
ACCOUNT_ID = "stripe_crm/account_id"
IMPORT_TYPE = "stripe_crm/import_type"
USER_ID = "stripe_crm/user_id"
STRIPE_ACCOUNT = "stripe_crm/stripe_account"
"""The connected Stripe account (``acct_…``), never its secret key."""
BATCH_SIZE = "stripe_crm/batch_imports"
"""On a ``billing_import_batch`` run: how many requests it was given."""
