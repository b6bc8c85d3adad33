"""What `make dev`'s terminal keeps of `dagster dev`'s output (lines as dagster 1.13 writes)."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from stripe_crm_pipelines.local import dev_log

GREEN, BLUE, RESET = "\x1b[32m", "\x1b[34m", "\x1b[0m"
RUN = "billing_contact_import - df327b85-2959-4b97-93a2-28219c941ab3"


def daemon(level: str, logger: str, message: str) -> str:
    return (
        f"{GREEN}2026-12-03 05:41:02 +0000{RESET} - {logger} - {BLUE}{level}{RESET} - {message}\n"
    )


def run(level: str, message: str) -> str:
    return f"2026-12-03 05:41:18 +0000 - dagster - {level} - {message}\n"


@pytest.mark.parametrize(
    "line",
    [
        run("DEBUG", f"{RUN} - 23659 - RUN_START - Started execution of run."),
        run("DEBUG", f"{RUN} - 23659 - RUN_SUCCESS - Finished execution of run."),
        run("ERROR", f"{RUN} - 23659 - RUN_FAILURE - Execution of run failed."),
        run("INFO", f"{RUN} - sync_customers - Synced 250 customers over 3 page(s): 229 added"),
        run("INFO", "__repository__ - billing_import_sensor - Requesting 1 import run(s)"),
        daemon("WARNING", "dagster.daemon.SensorDaemon", "Sensor billing_import_sensor failed"),
        "Traceback (most recent call last):\n",
        "Stripe sandbox listening on http://127.0.0.1:12111\n",
    ],
)
def test_the_projects_lines_runs_and_problems_are_shown(line):
    assert dev_log.worth_showing(line)


@pytest.mark.parametrize(
    "line",
    [
        daemon("INFO", "dagster.daemon.SensorDaemon", "Checking for new runs for sensor: x"),
        daemon("INFO", "dagster.daemon.SensorDaemon", "Sensor x skipped: empty result"),
        daemon("INFO", "dagster-webserver", "Serving dagster-webserver on http://127.0.0.1:3000"),
        run("DEBUG", f"{RUN} - 23659 - sync_customers - STEP_START - Started execution of step"),
        run("DEBUG", f"{RUN} - record_import_result - Writing file at: /tmp/storage/x"),
        "\n",
    ],
)
def test_ticks_and_step_events_are_not(line):
    assert not dev_log.worth_showing(line)


def test_relay_keeps_every_line_in_the_log_and_shows_the_chosen_ones(tmp_path):
    lines = [
        daemon("INFO", "dagster.daemon.SensorDaemon", "Checking for new runs for sensor: x"),
        run("DEBUG", f"{RUN} - 23659 - RUN_START - Started execution of run."),
    ]
    terminal = io.StringIO()

    dev_log.relay(io.StringIO("".join(lines)), terminal, tmp_path / "dev.log").join(timeout=10)

    assert terminal.getvalue() == lines[1]
    assert (tmp_path / "dev.log").read_text() == "".join(lines)


def test_loading_the_definitions_warns_about_nothing():
    """What the code server and every run worker do; Dagster's beta notices stay out of it."""
    loaded = subprocess.run(
        [sys.executable, "-W", "error::Warning", "-c",
         "from stripe_crm_pipelines.definitions import defs; defs.get_repository_def()"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert loaded.returncode == 0, loaded.stderr


def test_dagster_devs_supersession_notice_is_the_only_warning_filtered():
    """The PYTHONWARNINGS the launcher gives `dagster dev`, against the notice it would print."""
    from stripe_crm_pipelines.local.dev import _without_dev_command_notice

    code = (
        "import warnings\n"
        "from dagster import SupersessionWarning\n"
        "warnings.warn('Function `dev_command` is superseded and its usage is discouraged. "
        "Use dg dev instead.', SupersessionWarning)\n"
        "warnings.warn('Function `other_command` is superseded.', SupersessionWarning)\n"
    )
    env = {**os.environ, "PYTHONWARNINGS": _without_dev_command_notice({})}
    shown = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )

    assert shown.returncode == 0
    assert "dev_command" not in shown.stderr
    assert "other_command" in shown.stderr
