"""Run the whole project locally: ``python -m stripe_crm_pipelines.dev`` (what ``make dev`` runs).

Starts the local Stripe sandbox (with a demo connected account of customers), the local URL
shortener, seeds the embedded store with demo data once, then runs ``dagster dev`` (webserver and
daemon). Ctrl-C (or SIGTERM) stops everything it started. It refuses to start, with one line
saying why, while another launcher runs on the same DAGSTER_HOME or any of its ports is taken.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO

import requests

from stripe_crm_pipelines import cli_store, store
from stripe_crm_pipelines.local import demo, dev_log

STOP_TIMEOUT_SECONDS = 20
INSTANCE_LOCK = "dev.lock"
"""Under DAGSTER_HOME; holds the pid of the launcher that runs on it."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m stripe_crm_pipelines.dev",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    parser.add_argument(
        "--project-dir",
        type=Path,
        default=Path.cwd(),
        help="Project directory holding workspace.yaml and dagster.yaml "
        "(default: the current directory).",
    )
    parser.add_argument(
        "--dagster-home",
        type=Path,
        default=None,
        help="DAGSTER_HOME for run history (default: PROJECT/.dagster_home).",
    )
    parser.add_argument(
        "--store-dir",
        type=Path,
        default=None,
        help="Embedded store directory used when MONGODB_URI is unset "
        "(default: PROJECT/.local/store).",
    )
    parser.add_argument("--port", type=_port, default=3000, help="Dagster UI port (default 3000).")
    parser.add_argument(
        "--sandbox-port",
        type=_port,
        default=12111,
        help="Local Stripe sandbox port (default 12111).",
    )
    parser.add_argument(
        "--shortener-port",
        type=_port,
        default=8765,
        help="Local URL shortener port (default 8765).",
    )
    parser.add_argument("--no-demo", action="store_true", help="Do not seed demo data.")
    return parser


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number (1 to 65535)")
    return port


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    project = args.project_dir.resolve()
    missing = [
        name for name in ("workspace.yaml", "dagster.yaml") if not (project / name).is_file()
    ]
    if missing:
        parser.error(
            f"{project} is not the project directory (no {' or '.join(missing)}); run this "
            "where the README is, or pass --project-dir"
        )
    try:
        if uri := os.environ.get("MONGODB_URI"):
            store.check_scheme(uri)
    except store.StoreConfigError as error:
        parser.error(str(error))
    dagster_home = (args.dagster_home or project / ".dagster_home").resolve()
    store_dir = (args.store_dir or project / cli_store.DEV_STORE_DIR).resolve()
    dagster_home.mkdir(parents=True, exist_ok=True)
    instance_lock = claim_instance(dagster_home)  # held until this process exits
    refuse_busy_ports(
        {
            "Dagster UI, --port": args.port,
            "Stripe sandbox, --sandbox-port": args.sandbox_port,
            "URL shortener, --shortener-port": args.shortener_port,
        }
    )
    shutil.copyfile(project / "dagster.yaml", dagster_home / "dagster.yaml")

    sandbox_url = f"http://127.0.0.1:{args.sandbox_port}"
    shortener_url = f"http://127.0.0.1:{args.shortener_port}"
    env = dict(os.environ)
    env.setdefault("MONGODB_URI", store_dir.as_uri())
    env.update(
        DAGSTER_HOME=str(dagster_home),
        STRIPE_API_BASE=sandbox_url,
        SHORTENER_URL=shortener_url,
        PYTHONUNBUFFERED="1",
    )

    children: list[subprocess.Popen] = []

    def stop(*_signal_args) -> None:
        raise KeyboardInterrupt

    # Ctrl-C and SIGTERM both stop everything; installing the SIGINT handler explicitly also
    # covers launchers that start this process with SIGINT ignored (e.g. `make dev &`).
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        children.append(
            _start(
                [
                    sys.executable,
                    "-m",
                    "stripe_crm_pipelines.sandbox",
                    "--port",
                    str(args.sandbox_port),
                    "--seed-customers",
                    str(demo.DEMO_CUSTOMER_COUNT),
                    "--account",
                    demo.DEMO_STRIPE_ACCOUNT,
                ],
                env,
            )
        )
        _wait_for(f"{sandbox_url}/_sandbox/health", "Stripe sandbox")
        children.append(
            _start(
                [
                    sys.executable,
                    "-m",
                    "stripe_crm_pipelines.local.shortener",
                    "--port",
                    str(args.shortener_port),
                    "--quiet",
                ],
                env,
            )
        )
        _wait_for(f"{shortener_url}/health", "URL shortener")
        if not args.no_demo:
            _seed_demo(env["MONGODB_URI"], sandbox_url)
        print(
            f"Dagster UI: http://127.0.0.1:{args.port}  (DAGSTER_HOME={dagster_home}; "
            f"everything Dagster logs is in {dagster_home / dev_log.LOG_FILE})",
            flush=True,
        )
        dagster = _start(
            [
                sys.executable,
                "-m",
                "dagster",
                "dev",
                "-w",
                str(project / "workspace.yaml"),
                "-h",
                "127.0.0.1",
                "-p",
                str(args.port),
                "--log-level",
                "warning",
            ],
            {**env, "PYTHONWARNINGS": _without_dev_command_notice(env)},
            # Not the project directory: Dagster warns when it finds a dagster.yaml in the
            # working directory that is not DAGSTER_HOME's.
            cwd=dagster_home,
            stdout=subprocess.PIPE,
        )
        relay = dev_log.relay(dagster.stdout, sys.stdout, dagster_home / dev_log.LOG_FILE)
        children.append(dagster)
        code = dagster.wait()
        relay.join(timeout=5)
        return code
    except KeyboardInterrupt:
        return 0
    finally:
        _stop_all(children)
        instance_lock.close()


def claim_instance(dagster_home: Path) -> TextIO:
    """Hold ``DAGSTER_HOME/dev.lock`` while this launcher runs, so a second one cannot start.

    The lock is the operating system's (``flock``), so it goes with the process however it ends.
    Exits with one line naming the running launcher's pid when the lock is taken.
    """
    lock = (dagster_home / INSTANCE_LOCK).open("a+", encoding="utf-8")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise SystemExit(
            f"make dev is already running on {dagster_home} (pid {holder}); stop it with Ctrl-C "
            "in its terminal, or give this one another --dagster-home"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def refuse_busy_ports(ports: dict[str, int]) -> None:
    """Exit with one line naming every port another program already listens on."""
    busy = [f"{port} ({name})" for name, port in ports.items() if not _port_free(port)]
    if busy:
        ports_in_use = f"port {busy[0]} is" if len(busy) == 1 else f"ports {', '.join(busy)} are"
        raise SystemExit(
            f"make dev cannot start: {ports_in_use} already in use by another program; stop it "
            "or choose another port"
        )


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR: a port in TIME_WAIT after the last run is free to listen on again.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _seed_demo(mongo_uri: str, sandbox_url: str) -> None:
    summary = demo.seed_from_sandbox(store.connect(mongo_uri), sandbox_url)
    print(summary.describe(), flush=True)


def _start(
    command: list[str], env: dict[str, str], cwd: Path | None = None, stdout: int | None = None
) -> subprocess.Popen:
    # Each child leads its own process group, so stopping it also stops what it started.
    if stdout is None:
        return subprocess.Popen(command, env=env, cwd=cwd, start_new_session=True)
    return subprocess.Popen(
        command,
        env=env,
        cwd=cwd,
        start_new_session=True,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )


def _without_dev_command_notice(env: dict[str, str]) -> str:
    """``PYTHONWARNINGS`` for ``dagster dev`` without its notice that ``dg dev`` supersedes it.

    ``dg dev`` needs the separate ``dg`` command line and a ``dg`` project layout; until the
    project moves to them, the notice on every start says nothing a reader can act on.
    """
    notice = "ignore:Function `dev_command` is superseded"
    return ",".join(filter(None, (env.get("PYTHONWARNINGS"), notice)))


def _wait_for(url: str, name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{name} did not answer at {url} within {timeout:.0f} s")


def _stop_all(children: list[subprocess.Popen]) -> None:
    for child in reversed(children):
        if child.poll() is None:
            _signal_group(child, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    for child in reversed(children):
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(child, signal.SIGKILL)
            child.wait()


def _signal_group(child: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signum)


if __name__ == "__main__":
    raise SystemExit(main())
