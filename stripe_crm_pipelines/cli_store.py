"""Which CRM store the command-line tools (``history``, ``imports``) read, and saying so.

In order:

1. ``MONGODB_URI`` when it is set (as ``make dev`` itself does);
2. else, run in the project directory (the one holding ``workspace.yaml``), the embedded store
   ``make dev`` keeps there by default, ``.local/store``;
3. else the default embedded store (:data:`stripe_crm_pipelines.store.DEFAULT_STORE_DIR`).

Nothing is written to find it, so a ``make dev`` started with ``--store-dir`` elsewhere is read
with ``MONGODB_URI=file:///that/dir``. A tool prints its choice to stderr, warns when the store
does not exist yet or holds nothing, and never creates an embedded store just to read it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import pymongo.errors

from stripe_crm_pipelines import store

DEV_STORE_DIR = Path(".local") / "store"
"""``make dev``'s embedded store, under the project directory."""
PROJECT_MARKER = "workspace.yaml"


@dataclass(frozen=True)
class StoreChoice:
    """The store a tool opens and why that one."""

    uri: str
    origin: str

    def describe(self) -> str:
        return f"store: {store.redact_uri(self.uri)} ({self.origin})"

    def embedded_directory(self) -> Path | None:
        """The directory of an embedded (``file://``) store, else None; a relative one (such as
        ``file://.local/store``, whose ``.local`` would be read as a host) is refused."""
        if store.uri_scheme(self.uri) != "file":
            return None
        return store.file_store_directory(self.uri)

    def is_missing(self) -> bool:
        """An embedded store whose directory does not exist or is empty: nothing was ever
        written there (opening it would create the store's files)."""
        directory = self.embedded_directory()
        return directory is not None and (not directory.is_dir() or not any(directory.iterdir()))


def choose_store(cwd: Path | None = None, environ: Mapping[str, str] | None = None) -> StoreChoice:
    """The store a tool started in ``cwd`` (default: the current directory) should read."""
    environ = os.environ if environ is None else environ
    if environ.get("MONGODB_URI"):
        return StoreChoice(environ["MONGODB_URI"], "from MONGODB_URI")
    directory = (cwd or Path.cwd()).resolve()
    if (directory / PROJECT_MARKER).is_file():
        return StoreChoice(
            (directory / DEV_STORE_DIR).as_uri(), f"make dev's store in {DEV_STORE_DIR}"
        )
    return StoreChoice(store.resolve_uri(), "the default embedded store; MONGODB_URI is unset")


def open_store(choice: StoreChoice, err: TextIO):
    """Open the chosen store for reading after saying which it is; None when it does not exist.

    Warns on ``err`` when the store is new (no embedded store there yet) or holds no collection.
    """
    print(choice.describe(), file=err)
    if choice.is_missing():
        print(
            f"warning: there is no store at {choice.embedded_directory()} yet, so nothing is "
            "recorded there. Run this in the project directory after `make dev` has started, "
            "or set MONGODB_URI.",
            file=err,
        )
        return None
    db = store.connect(choice.uri)
    try:
        empty = not db.list_collection_names()
    except pymongo.errors.OperationFailure:
        # A MongoDB user may read its collections without being allowed to list them.
        empty = False
    if empty:
        print(f"warning: the store holds no collections ({store.redact_uri(choice.uri)})", file=err)
    return db
