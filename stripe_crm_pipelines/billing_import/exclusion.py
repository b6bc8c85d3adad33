"""One import or sync at a time per account, whichever run it is in.

Stripe rate-limits per connected account, and two writers of one account's contacts would race.
Runs of their own (``billing_contact_import``, ``billing_contact_sync``) carry the account's
``stripe_crm/stripe_account`` tag, and the instance's run queue starts one run per tag value at a
time. A ``billing_import_batch`` run imports many accounts, so that tag cannot describe it;
instead every import and sync first announces itself, then looks for anyone else:

* an import announces itself by claiming its request; it then looks for another claimed request
  of the account (:func:`queue.others_working_on`; in a batch run, one its own run holds counts
  too) and steps back if it finds one (the request is released, untouched, for a later run).
  An import in a batch also looks for a started run tagged with the account's Stripe account
  (:func:`who_else_works_on`); a run of its own need not, as the run queue keeps it apart from
  those;
* a sync announces itself by running (its run is started before its op looks); it looks for
  claimed requests of the account and, finding one, leaves its cursor where it is until its next
  turn.

Of two that meet, at least one looks after the other has announced itself, so they never both go
on (both may step back; each tries again later).
"""

from __future__ import annotations

from bson import ObjectId
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter

from stripe_crm_pipelines.billing_import import queue, tags
from stripe_crm_pipelines.stripe_keys import connected_accounts_of

RUNNING_STATUSES = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
"""A run in these states may be working on its account right now."""
WAITING_STATUSES = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED]


def running_runs_of(
    instance: DagsterInstance, stripe_account: str, except_run_id: str
) -> list[DagsterRun]:
    """Started runs tagged with ``stripe_account`` (imports and syncs), except ``except_run_id``."""
    runs = instance.get_runs(
        RunsFilter(tags={tags.STRIPE_ACCOUNT: stripe_account}, statuses=RUNNING_STATUSES)
    )
    return [run for run in runs if run.run_id != except_run_id]


def who_else_works_on(
    db, instance: DagsterInstance, account_id: ObjectId, run_id: str, request_id: ObjectId
) -> str | None:
    """What else imports or syncs ``account_id`` while ``run_id`` holds its request
    ``request_id``, or None; another request of the account in the same batch counts."""
    others = queue.others_working_on(db, account_id, run_id, request_id)
    if others:
        return f"import {others[0]} (claimed by another run, or by another import of this run)"
    stripe_account = connected_accounts_of(db, [account_id]).get(account_id)
    if stripe_account:
        for run in running_runs_of(instance, stripe_account, run_id):
            return f"run {run.run_id} of {run.job_name}"
    return None
