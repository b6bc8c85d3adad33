"""Which CRM store the command-line tools (``history``, ``imports``) read, and saying so.

In order:

1. ``MONGODB_URI`` when it is set;
2. else the store ``make dev`` uses, which it records in ``.local/settings.env`` of the project
   directory (a ``MONGODB_URI=…`` line), when the tool runs in that directory;
3. else the default embedded store (:data:`stripe_crm_pipelines.store.DEFAULT_STORE_DIR`).

A tool prints its choice to stderr, warns when the store does not exist yet or holds nothing, and
never creates an embedded store just to read it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO
from urllib.parse import unquote, urlparse

import pymongo.errors

from stripe_crm_pipelines import store

SETTINGS_FILE = Path(".local") / "settings.env"
"""Written by ``make dev`` under the project directory; read relative to the current one."""
_SETTINGS_HEADER = (
    "# Written by `make dev` (python -m stripe_crm_pipelines.dev) each time it starts.\n"
    "# `python -m stripe_crm_pipelines.history` and `... imports` run in this project directory\n"
    "# read the store named here when MONGODB_URI is unset.\n"
)


@dataclass(frozen=True)
class StoreChoice:
    """The store a tool opens and why that one."""

    uri: str
    origin: str

    def describe(self) -> str:
        return f"store: {redact_uri(self.uri)} ({self.origin})"

    def embedded_directory(self) -> Path | None:
        """The directory of an embedded (``file://``) store, else None."""
        parsed = urlparse(self.uri)
        return Path(unquote(parsed.path)) if parsed.scheme == "file" else None

    def is_missing(self) -> bool:
        """An embedded store whose directory does not exist: nothing was ever written there."""
        directory = self.embedded_directory()
        return directory is not None and not directory.is_dir()


def choose_store(cwd: Path | None = None, environ: Mapping[str, str] | None = None) -> StoreChoice:
    """The store a tool started in ``cwd`` (default: the current directory) should read."""
    environ = os.environ if environ is None else environ
    if environ.get("MONGODB_URI"):
        return StoreChoice(environ["MONGODB_URI"], "from MONGODB_URI")
    settings = (cwd or Path.cwd()) / SETTINGS_FILE
    uri = read_settings(settings).get("MONGODB_URI")
    if uri:
        return StoreChoice(uri, f"make dev's store, from {SETTINGS_FILE}")
    return StoreChoice(store.resolve_uri(), "the default embedded store; MONGODB_URI is unset")


def read_settings(path: Path) -> dict[str, str]:
    """``NAME=value`` lines of a settings file; comments and blank lines skipped; {} if absent."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    settings: dict[str, str] = {}
    for line in text.splitlines():
        name, separator, value = line.strip().partition("=")
        if separator and not name.startswith("#"):
            settings[name.strip()] = value.strip()
    return settings


def write_settings(project_dir: Path, mongodb_uri: str) -> Path:
    """Record ``make dev``'s store for the tools; only an embedded store's URI is written.

    A ``mongodb://`` URI may hold a password, so it is never written to disk: the tools then need
    ``MONGODB_URI`` set as it was for ``make dev``.
    """
    path = project_dir / SETTINGS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    if urlparse(mongodb_uri).scheme == "file":
        body = f"MONGODB_URI={mongodb_uri}\n"
    else:
        body = "# make dev uses MONGODB_URI from its environment; set it for the tools too.\n"
    path.write_text(_SETTINGS_HEADER + body, encoding="utf-8")
    return path


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
        print(f"warning: the store holds no collections ({redact_uri(choice.uri)})", file=err)
    return db


def redact_uri(uri: str) -> str:
    """The URI with any password replaced by ``***``, fit for a terminal or a log."""
    parsed = urlparse(uri)
    if not parsed.password:
        return uri
    netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)
    return parsed._replace(netloc=netloc).geturl()
