"""What ``make dev``'s terminal shows of ``dagster dev``: the project's lines, not every tick.

``dagster dev`` runs with ``--log-level warning``, so the daemon's per-tick lines ("Checking for
new runs for sensor …") are not written at all. Run workers still log every step event at DEBUG;
of those the terminal keeps a run's start and end. It also keeps everything the project logs
(the ops' and sensors' ``context.log`` lines, at INFO and above), every warning and error, and
anything that is not a log line (a traceback). Every line, shown or not, goes to
``DAGSTER_HOME/dev.log``; a run's full event log is on its page in the UI.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import IO, TextIO

LOG_FILE = "dev.log"
RUN_EVENTS_SHOWN = ("RUN_START", "RUN_SUCCESS", "RUN_FAILURE", "RUN_CANCELED")

_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
_LOG_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4} - (?P<logger>[\w.\-]+) - "
    r"(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL) - (?P<message>.*)$"
)


def worth_showing(line: str) -> bool:
    """Whether a line of ``dagster dev``'s output belongs on the terminal (see module doc)."""
    match = _LOG_LINE.match(_COLOUR.sub("", line).rstrip("\n"))
    if match is None:
        return bool(line.strip())
    level, message = match["level"], match["message"]
    if level == "DEBUG":
        return any(f" - {event} - " in message for event in RUN_EVENTS_SHOWN)
    if level == "INFO":
        # Dagster's own services log as dagster.daemon.* and dagster-webserver; runs and sensors
        # log the project's lines as plain "dagster".
        return match["logger"] == "dagster"
    return True


def relay(output: IO[str], terminal: TextIO, log_path: Path) -> threading.Thread:
    """Copy ``output`` to ``log_path`` whole and to ``terminal`` filtered, on a daemon thread."""

    def copy() -> None:
        with log_path.open("a", encoding="utf-8") as log:
            for line in output:
                log.write(line)
                log.flush()
                if worth_showing(line):
                    terminal.write(line)
                    terminal.flush()

    thread = threading.Thread(target=copy, name="dagster-dev-output", daemon=True)
    thread.start()
    return thread
