"""A burst of small imports under the real dev stack: how soon are they all done?

    .venv/bin/python benchmarks/burst_imports.py              # 200 requests of 1..100 customers
    .venv/bin/python benchmarks/burst_imports.py --requests 20 --max-customers 20
    .venv/bin/python benchmarks/burst_imports.py --baseline   # and a 20-request burst, batching off
    .venv/bin/python benchmarks/burst_imports.py --help

It starts ``python -m stripe_crm_pipelines.dev`` (what ``make dev`` runs: the Dagster UI and
daemon, the local Stripe sandbox, the embedded on-disk store) in a temporary directory, on free
ports and without demo data, and waits until the code location is loaded and the daemon has
ticked ``billing_import_sensor``. Then, outside the measured time:

1. the sandbox is seeded with ``--requests`` connected accounts of 1 to ``--max-customers``
   customers each (sizes drawn with a fixed seed; the sandbox's realistic generator, so some
   customers have no email and about 5% reuse another's);
2. the store receives one CRM account per Stripe account and its billing Stripe key.

Right after the sensor's next tick, one pending ``billing-contacts`` request per account (the
fields the CRM writes) is inserted in one ``insert_many``: that instant is the start. The store
is then polled until every request is completed, failed or cancelled; the end is the newest
``finished_at`` the requests themselves record. Inserting just after a tick makes the figure
include the longest wait for the sensor (its interval), the worst case for the requests.

Printed: insert → all done seconds, imports per minute, insert → first claim (the sensor's
interval and the first run's start), the time per import from the first claim on, completed and
failed requests, the runs that carried them (Dagster's creation → start and start → end means,
the most in progress at once), whether every request has its own ``contact_import_results``
document with a run id, and whether every account's contacts hold exactly its Stripe customers
(one contact per customer, the newest of those sharing an email, no customer twice, nothing
else); then the target and a one-line summary.

``--baseline`` first runs a ``--baseline-requests`` burst of the same sizes on a fresh stack
started with ``STRIPE_CRM_IMPORT_BATCH_MAX=0`` (one run per request), to compare the cost per
import in one sitting. The main burst's stack gets the environment as it is; both get
``STRIPE_CRM_IMPORT_SENSOR_INTERVAL_SECONDS`` from it (unset: 30 s, the sensor's wait that the
figure includes at its longest), and the first line of each burst names these settings.

Exit status: 0 when every request completed with its result and every account's contacts are
right (the 60 s target met or not), 1 otherwise (a failed request, the ``--timeout``, a wrong
account, or the stack not starting).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import requests
from bson import ObjectId

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import.requests import IMPORT_SOURCE, parse_import_request
from stripe_crm_pipelines.billing_import.sensor import import_sensor_interval_seconds
from stripe_crm_pipelines.definitions import BATCH_MAX_VARIABLE
from stripe_crm_pipelines.sandbox import SandboxControl
from stripe_crm_pipelines.stripe_keys import BILLING_APP

PROJECT = Path(__file__).resolve().parents[1]
SEED = 20_260_301
TARGET_SECONDS = 60.0
LOCATION = "stripe_crm_pipelines"
SENSOR = "billing_import_sensor"
FINISHED = ("completed", "failed", "cancelled")
STARTUP_SECONDS = 240.0
STOP_SECONDS = 60.0
POLL_SECONDS = 2.0
MAPPINGS = {"name": "name", "phone": "phone", "address-city": "address.city"}

SENSOR_TICKS_QUERY = """
query Ticks($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { status ticks(limit: 1) { status timestamp } } }
  }
}
"""
RUNS_QUERY = """
query Runs($ids: [String!]) {
  runsOrError(filter: {runIds: $ids}) {
    ... on Runs { results { runId status creationTime startTime endTime } }
  }
}
"""
LOCATIONS_QUERY = """
{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus
    locationOrLoadError { __typename } } } } }
"""


class StackError(RuntimeError):
    """The dev stack did not start, or stopped while the burst ran."""


# --- the dev stack -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class DevStack:
    """``python -m stripe_crm_pipelines.dev`` in ``root``, with its own ports and store."""

    root: Path
    extra_env: dict[str, str]
    process: subprocess.Popen | None = None
    ports: dict[str, int] = field(default_factory=dict)
    groups: set[int] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['ui']}"

    @property
    def sandbox_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['sandbox']}"

    @property
    def store_uri(self) -> str:
        return (self.root / "store").as_uri()

    @property
    def log(self) -> Path:
        return self.root / "dev.log"

    def start(self) -> None:
        """Start the launcher; return once the daemon has ticked the import sensor."""
        self.ports = {name: free_port() for name in ("ui", "sandbox", "shortener")}
        env = {key: value for key, value in os.environ.items() if key != "MONGODB_URI"}
        env.update(self.extra_env, PYTHONUNBUFFERED="1")
        command = [sys.executable, "-m", "stripe_crm_pipelines.dev", "--no-demo"]
        options = {
            "--project-dir": PROJECT,
            "--dagster-home": self.root / "dagster_home",
            "--store-dir": self.root / "store",
            "--port": self.ports["ui"],
            "--sandbox-port": self.ports["sandbox"],
            "--shortener-port": self.ports["shortener"],
        }
        for option, value in options.items():
            command += [option, str(value)]
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                command,
                env=env,
                cwd=PROJECT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.groups = {self.process.pid}
        self.wait(self.location_loaded, STARTUP_SECONDS, "the code location to load")
        self.wait(self.last_tick, STARTUP_SECONDS, f"the daemon's first tick of {SENSOR}")

    def alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            code = None if self.process is None else self.process.returncode
            raise StackError(f"the dev launcher exited ({code}):\n{self.log_tail()}")

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.alive()
            value = predicate()
            if value:
                return value
            time.sleep(0.5)
        raise StackError(f"timed out after {timeout:.0f} s waiting for {what}:\n{self.log_tail()}")

    def log_tail(self, characters: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-characters:]

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        response = requests.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=10
        )
        response.raise_for_status()
        return response.json()["data"]

    def location_loaded(self) -> bool:
        try:
            entries = self.graphql(LOCATIONS_QUERY)["workspaceOrError"]["locationEntries"]
        except (requests.RequestException, KeyError, TypeError, ValueError):
            return False
        return any(
            entry["name"] == LOCATION
            and entry["loadStatus"] == "LOADED"
            and entry["locationOrLoadError"]["__typename"] == "RepositoryLocation"
            for entry in entries
        )

    def last_tick(self) -> float | None:
        """When the import sensor's newest finished tick started (epoch seconds), if any."""
        selector = {
            "repositoryLocationName": LOCATION,
            "repositoryName": "__repository__",
            "sensorName": SENSOR,
        }
        try:
            sensor = self.graphql(SENSOR_TICKS_QUERY, {"selector": selector})["sensorOrError"]
        except (requests.RequestException, KeyError, TypeError, ValueError):
            return None
        ticks = (sensor.get("sensorState") or {}).get("ticks") or []
        if not ticks or ticks[0]["status"] == "STARTED":
            return None
        return ticks[0]["timestamp"]

    def runs(self, run_ids: set[str]) -> list[dict[str, Any]]:
        """The runs' status and times, once none is still active (at most a minute)."""
        runs: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            runs = self.graphql(RUNS_QUERY, {"ids": sorted(run_ids)})["runsOrError"]["results"]
            if all(run["endTime"] for run in runs):
                break
            time.sleep(1)
        return runs

    def wait_for_next_tick(self) -> None:
        """Return as soon as the import sensor has finished a tick newer than its last one."""
        previous = self.last_tick() or 0.0
        self.wait(
            lambda: (self.last_tick() or 0.0) > previous, STARTUP_SECONDS, f"a tick of {SENSOR}"
        )

    def stop(self) -> list[str]:
        """Stop the launcher and everything it started; names what had to be killed."""
        if self.process is None:
            return []
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(self.process.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                    self.groups.add(os.getpgid(child.pid))
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # A code server restarted by `dagster dev` while it shuts down outlives it in dagster's
        # process group until its heartbeat times out: stop it with the rest.
        _, lingering = psutil.wait_procs(self._leftovers(), timeout=10)
        names = [f"{p.pid} {' '.join(p.info['cmdline'] or [])[:80]}" for p in lingering]
        for leftover in lingering:
            with contextlib.suppress(psutil.NoSuchProcess):
                leftover.terminate()
        _, alive = psutil.wait_procs(lingering, timeout=10)
        for leftover in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                leftover.kill()
        self.process = None
        return names

    def _leftovers(self) -> list[psutil.Process]:
        leftovers = []
        for process in psutil.process_iter(["cmdline"]):
            try:
                if process.pid != os.getpid() and os.getpgid(process.pid) in self.groups:
                    leftovers.append(process)
            except ProcessLookupError:
                continue
        return leftovers


@contextlib.contextmanager
def running_stack(root: Path, extra_env: dict[str, str], keep: bool = False) -> Iterator[DevStack]:
    """A started stack in ``root``, stopped on the way out (after Ctrl-C with ``keep``)."""
    root.mkdir(parents=True)
    stack = DevStack(root, extra_env)
    try:
        stack.start()
        yield stack
        if keep:
            print(
                f"\nthe stack is left running: UI {stack.url}, sandbox {stack.sandbox_url}, "
                f"store {stack.store_uri}, log {stack.log}; Ctrl-C stops it and leaves "
                f"{root.parent} in place",
                file=sys.stderr,
            )
            with contextlib.suppress(KeyboardInterrupt):
                while stack.process is not None and stack.process.poll() is None:
                    time.sleep(1)
    finally:
        killed = stack.stop()
        if killed:
            print(f"stopped processes left by the launcher: {'; '.join(killed)}", file=sys.stderr)


# --- the burst -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    crm_id: ObjectId
    user_id: ObjectId
    stripe_account: str
    secret_key: str
    customers: int


def customer_counts(requests_count: int, max_customers: int) -> list[int]:
    rng = random.Random(SEED)
    return [rng.randint(1, max_customers) for _ in range(requests_count)]


def make_accounts(counts: list[int]) -> list[Account]:
    return [
        Account(
            crm_id=ObjectId(),
            user_id=ObjectId(),
            stripe_account=f"acct_1Burst{index:06d}",
            secret_key=f"sk_test_burst_imports_{index:06d}",
            customers=count,
        )
        for index, count in enumerate(counts)
    ]


def seed_sandbox(url: str, accounts: list[Account]) -> dict[str, set[str]]:
    """Seed each account's customers; returns the customer ids each account's contacts should
    hold: every customer without an email, and of those sharing an email (trimmed, lower-cased)
    the newest."""
    control = SandboxControl(url)
    session = requests.Session()
    expected: dict[str, set[str]] = {}
    try:
        for account in accounts:
            control.seed(account.customers, SEED, account.stripe_account)
            expected[account.stripe_account] = _one_per_email(
                _list_customers(session, url, account)
            )
    finally:
        control.close()
        session.close()
    return expected


def _list_customers(session: requests.Session, url: str, account: Account) -> list[dict]:
    """The account's customers, newest first, as the import lists them."""
    customers: list[dict] = []
    params: dict[str, Any] = {"limit": 100}
    while True:
        response = session.get(
            f"{url}/v1/customers",
            params=params,
            headers={
                "Authorization": f"Bearer {account.secret_key}",
                "Stripe-Account": account.stripe_account,
            },
            timeout=30,
        )
        response.raise_for_status()
        page = response.json()
        customers += page["data"]
        if not page["has_more"]:
            return customers
        params["starting_after"] = page["data"][-1]["id"]


def _one_per_email(customers: list[dict]) -> set[str]:
    kept: set[str] = set()
    emails: set[str] = set()
    for customer in customers:
        email = (customer.get("email") or "").strip().lower()
        if email:
            if email in emails:
                continue
            emails.add(email)
        kept.add(customer["id"])
    return kept


def prepare_store(db, accounts: list[Account]) -> None:
    """The CRM accounts and their billing Stripe keys, as the CRM holds them."""
    store.ensure_indexes(db)
    now = datetime.now(UTC)
    db[store.ACCOUNTS].insert_many(
        [
            {"_id": a.crm_id, "name": f"Burst agency {i}", "owner": a.user_id, "createdAt": now}
            for i, a in enumerate(accounts)
        ]
    )
    db[store.STRIPE_KEYS].insert_many(
        [
            {
                "account_id": account.crm_id,
                "connected_apps": [BILLING_APP],
                "token": {
                    "access_token": account.secret_key,
                    "stripe_user_id": account.stripe_account,
                },
            }
            for account in accounts
        ]
    )


def import_requests(accounts: list[Account], created_at: datetime) -> list[dict[str, Any]]:
    """One pending request per account, with the fields the CRM writes."""
    documents = [
        {
            "_id": ObjectId(),
            "status": "pending",
            "source": IMPORT_SOURCE,
            "in_progress": False,
            "type": "contacts",
            "account_id": account.crm_id,
            "user_id": account.user_id,
            "parent_account": account.crm_id,
            "client_id": ObjectId(),
            "mappings": dict(MAPPINGS),
            "new_contact": True,
            "createdAt": created_at,
        }
        for account in accounts
    ]
    for document in documents:
        parse_import_request(document)
    return documents


@dataclass(frozen=True)
class RunTimes:
    """What Dagster says of the runs that carried the burst."""

    runs: int
    succeeded: int
    queued_seconds: float | None
    """Mean of creation → start: the sensor asked for the run, its process reported starting."""
    running_seconds: float | None
    """Mean of start → end."""
    at_once: int
    """The most runs in progress at the same moment."""

    @classmethod
    def of(cls, runs: list[dict[str, Any]]) -> RunTimes:
        started = [run for run in runs if run["startTime"]]
        ended = [run for run in started if run["endTime"]]
        moments = sorted(
            [(run["startTime"], 1) for run in started] + [(run["endTime"], -1) for run in ended]
        )
        at_once = in_progress = 0
        for _, change in moments:
            in_progress += change
            at_once = max(at_once, in_progress)
        return cls(
            runs=len(runs),
            succeeded=sum(1 for run in runs if run["status"] == "SUCCESS"),
            queued_seconds=_mean([r["startTime"] - r["creationTime"] for r in started]),
            running_seconds=_mean([r["endTime"] - r["startTime"] for r in ended]),
            at_once=at_once,
        )


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass
class BurstResult:
    requests: int
    customers: int
    expected_contacts: int
    statuses: Counter
    inserted_at: datetime
    first_claim: datetime | None
    last_finish: datetime | None
    run_ids: set[str]
    run_times: RunTimes
    without_result: list[str]
    wrong_accounts: list[str]
    contacts: int
    timed_out: bool

    @property
    def completed(self) -> int:
        return self.statuses["completed"]

    @property
    def done(self) -> int:
        return sum(self.statuses[status] for status in FINISHED)

    @property
    def seconds(self) -> float | None:
        if self.timed_out or self.last_finish is None:
            return None
        return (self.last_finish - self.inserted_at).total_seconds()

    @property
    def per_minute(self) -> float | None:
        seconds = self.seconds
        return self.requests * 60 / seconds if seconds else None

    @property
    def pickup_seconds(self) -> float | None:
        if self.first_claim is None:
            return None
        return (self.first_claim - self.inserted_at).total_seconds()

    @property
    def per_import_after_claim(self) -> float | None:
        if self.seconds is None or self.pickup_seconds is None:
            return None
        return (self.seconds - self.pickup_seconds) / self.requests

    @property
    def sound(self) -> bool:
        return (
            not self.timed_out
            and self.completed == self.requests
            and not self.without_result
            and not self.wrong_accounts
        )


def run_burst(stack: DevStack, counts: list[int], timeout: float) -> BurstResult:
    """Seed, insert the requests just after a sensor tick, wait for them, check the outcome."""
    accounts = make_accounts(counts)
    print(
        f"seeding {len(accounts)} Stripe accounts ({sum(counts):,} customers) ...", file=sys.stderr
    )
    expected = seed_sandbox(stack.sandbox_url, accounts)
    db = store.connect(stack.store_uri)
    prepare_store(db, accounts)
    print("waiting for the next sensor tick ...", file=sys.stderr)
    stack.wait_for_next_tick()
    inserted_at = datetime.now(UTC)
    documents = import_requests(accounts, inserted_at)
    started = time.monotonic()
    db[store.QUEUES].insert_many(documents)
    import_ids = [document["_id"] for document in documents]
    print(f"inserted {len(import_ids)} import requests; waiting ...", file=sys.stderr)
    finished, timed_out = _wait_for_requests(stack, db, import_ids, timeout, started)

    statuses = Counter(request["status"] for request in finished.values())
    claims = [_utc(r["claimed_at"]) for r in finished.values() if r.get("claimed_at")]
    finishes = [_utc(r["finished_at"]) for r in finished.values() if r.get("finished_at")]
    run_ids, without_result = _results(db, finished)
    wrong_accounts, contacts = _check_contacts(db, accounts, expected)
    return BurstResult(
        requests=len(import_ids),
        customers=sum(counts),
        expected_contacts=sum(len(ids) for ids in expected.values()),
        statuses=statuses,
        inserted_at=inserted_at,
        first_claim=min(claims, default=None),
        last_finish=max(finishes, default=None),
        run_ids=run_ids,
        run_times=RunTimes.of(stack.runs(run_ids)),
        without_result=without_result,
        wrong_accounts=wrong_accounts,
        contacts=contacts,
        timed_out=timed_out,
    )


def _wait_for_requests(
    stack: DevStack, db, import_ids: list[ObjectId], timeout: float, started: float
) -> tuple[dict[ObjectId, dict], bool]:
    """Every request's document once all are finished, or as they are at ``timeout``."""
    fields = {"status": 1, "in_progress": 1, "claimed_at": 1, "finished_at": 1, "result_id": 1}
    reported = started
    while True:
        stack.alive()
        documents = {
            document["_id"]: document
            for document in db[store.QUEUES].find({"_id": {"$in": import_ids}}, fields)
        }
        done = sum(
            1
            for document in documents.values()
            if document["status"] in FINISHED and not document.get("in_progress")
        )
        elapsed = time.monotonic() - started
        if done == len(import_ids):
            return documents, False
        if elapsed > timeout:
            return documents, True
        if time.monotonic() - reported >= 30:
            print(f"  {done}/{len(import_ids)} done after {elapsed:.0f} s", file=sys.stderr)
            reported = time.monotonic()
        time.sleep(POLL_SECONDS)


def _results(db, requests_by_id: dict[ObjectId, dict]) -> tuple[set[str], list[str]]:
    """The run ids of the requests' result documents, and the requests without their own."""
    results = {
        document["_id"]: document
        for document in db[store.IMPORT_RESULTS].find(
            {"import_id": {"$in": list(requests_by_id)}}, {"import_id": 1, "run_id": 1}
        )
    }
    run_ids: set[str] = set()
    without: list[str] = []
    for import_id, request in requests_by_id.items():
        result = results.get(request.get("result_id"))
        if result is None or result["import_id"] != import_id or not result.get("run_id"):
            without.append(str(import_id))
        else:
            run_ids.add(result["run_id"])
    return run_ids, without


def _check_contacts(
    db, accounts: list[Account], expected: dict[str, set[str]]
) -> tuple[list[str], int]:
    """Accounts whose contacts are not exactly their expected customers, each with what is
    wrong; and the number of contacts of the burst's accounts."""
    held: dict[ObjectId, list[str | None]] = defaultdict(list)
    for contact in db[store.CONTACTS].find(
        {"parent_account": {"$in": [account.crm_id for account in accounts]}},
        {"parent_account": 1, "stripe_customer_id": 1},
    ):
        held[contact["parent_account"]].append(contact.get("stripe_customer_id"))
    wrong: list[str] = []
    for account in accounts:
        ids = held[account.crm_id]
        wanted = expected[account.stripe_account]
        problems = []
        if missing := len(wanted - set(ids)):
            problems.append(f"{missing} customer(s) without a contact")
        if unexpected := len(set(ids) - wanted):
            problems.append(f"{unexpected} contact(s) of no expected customer")
        if duplicated := len(ids) - len(set(ids)):
            problems.append(f"{duplicated} customer(s) on two contacts")
        if problems:
            wrong.append(
                f"{account.crm_id} ({account.stripe_account}, {account.customers} customers, "
                f"{len(wanted)} expected contacts, {len(ids)} held): {', '.join(problems)}"
            )
    return wrong, sum(len(ids) for ids in held.values())


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --- report --------------------------------------------------------------------------------------


def describe(name: str, result: BurstResult, batching: str) -> list[str]:
    elapsed = result.seconds
    others = ", ".join(
        f"{count} {status}"
        for status, count in sorted(result.statuses.items())
        if status not in ("completed", "failed")
    )
    accounts_right = result.requests - len(result.wrong_accounts)
    runs = result.run_times
    lines = [
        f"{name}: {result.requests} import requests, one per account, {result.customers:,} "
        f"customers in all; batching: {batching}",
        f"  insert → all done        {_seconds(elapsed)}"
        + (f" (timed out: {result.done}/{result.requests} done)" if result.timed_out else ""),
        f"  imports per minute       {'-' if elapsed is None else f'{result.per_minute:.1f}'}",
        f"  insert → first claim     {_seconds(result.pickup_seconds)}",
        f"  first claim → all done   {_seconds(result.per_import_after_claim, 2)} per import",
        f"  completed / failed       {result.completed} / {result.statuses['failed']}"
        + (f" ({others})" if others else ""),
        f"  runs                     {runs.runs} ({runs.succeeded} succeeded), at most "
        f"{runs.at_once} at once",
        f"  run created → started    {_seconds(runs.queued_seconds)} mean",
        f"  run started → ended      {_seconds(runs.running_seconds)} mean",
        f"  own result, with run id  {result.requests - len(result.without_result)}/"
        f"{result.requests} requests",
        f"  contacts right           {accounts_right}/{result.requests} accounts: "
        f"{result.contacts:,} contacts for {result.expected_contacts:,} expected",
    ]
    lines += [f"  request without its result: {import_id}" for import_id in result.without_result]
    lines += [f"  wrong account: {line}" for line in result.wrong_accounts]
    return lines


def _seconds(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f} s"


def summary(args: argparse.Namespace, result: BurstResult) -> str:
    met = result.seconds is not None and result.seconds <= TARGET_SECONDS and result.sound
    head = f"burst: {result.requests} imports of <={args.max_customers} customers"
    if result.seconds is None:
        done = f"{result.done}/{result.requests} done after the {args.timeout:.0f} s timeout"
    else:
        done = f"done in {result.seconds:.1f} s after insert ({result.per_minute:.0f}/min)"
    return f"{head} {done}; target <= {TARGET_SECONDS:.0f} s [{'met' if met else 'MISSED'}]"


def batching_of(env: dict[str, str]) -> str:
    """The stack's batching and sensor interval, as its environment sets them."""
    value = env.get(BATCH_MAX_VARIABLE)
    batching = f"{BATCH_MAX_VARIABLE}={value}" if value is not None else "default"
    return f"{batching}; sensor every {import_sensor_interval_seconds(env)} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark a burst of small billing imports under the real dev stack "
        "(dagster dev, the Stripe sandbox, the embedded store); see the module docstring."
    )
    parser.add_argument(
        "--requests", type=int, default=200, help="import requests, one per account (200)"
    )
    parser.add_argument(
        "--max-customers", type=int, default=100, help="customers per account, at most (100)"
    )
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds to wait for the requests (900)"
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="leave the main burst's stack running until Ctrl-C, and keep its directory",
    )
    parser.add_argument(
        "--baseline",
        action="store_true",
        help=f"first run a smaller burst with {BATCH_MAX_VARIABLE}=0 (one run per request)",
    )
    parser.add_argument(
        "--baseline-requests", type=int, default=20, help="requests of the baseline burst (20)"
    )
    args = parser.parse_args(argv)
    if args.requests < 1 or args.max_customers < 1 or args.baseline_requests < 1:
        parser.error("--requests, --max-customers and --baseline-requests must be positive")

    # Ctrl-C and SIGTERM stop the stack on the way out, also when started with SIGINT ignored
    # (in the background of a shell script).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    root = Path(tempfile.mkdtemp(prefix="burst-imports-"))
    results: dict[str, BurstResult] = {}
    try:
        if args.baseline:
            env = {BATCH_MAX_VARIABLE: "0"}
            counts = customer_counts(args.baseline_requests, args.max_customers)
            print("starting the baseline stack ...", file=sys.stderr)
            with running_stack(root / "baseline", env) as stack:
                results["baseline"] = run_burst(stack, counts, args.timeout)
            print(
                "\n".join(
                    describe("baseline", results["baseline"], batching_of({**os.environ, **env}))
                )
                + "\n"
            )
        counts = customer_counts(args.requests, args.max_customers)
        print("starting the stack ...", file=sys.stderr)
        with running_stack(root / "burst", {}, keep=args.keep) as stack:
            results["burst"] = run_burst(stack, counts, args.timeout)
            lines = describe("burst", results["burst"], batching_of(dict(os.environ)))
            if "baseline" in results:
                lines += ["", *comparison(results["burst"], results["baseline"])]
            print("\n".join([*lines, "", summary(args, results["burst"])]), flush=True)
    except StackError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; the stack is stopped", file=sys.stderr)
        return 130
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0 if all(result.sound for result in results.values()) else 1


def _interrupt(*_signal_args: object) -> None:
    raise KeyboardInterrupt


def comparison(burst: BurstResult, baseline: BurstResult) -> list[str]:
    """Seconds per import once the sensor picked the burst up, the tick wait left out."""
    ratio = ""
    if burst.per_import_after_claim and baseline.per_import_after_claim:
        ratio = f" ({baseline.per_import_after_claim / burst.per_import_after_claim:.1f}x)"
    return [
        "first claim → all done, per import: "
        f"burst {_seconds(burst.per_import_after_claim, 2)}, "
        f"baseline {_seconds(baseline.per_import_after_claim, 2)}{ratio}"
    ]


if __name__ == "__main__":
    sys.exit(main())
