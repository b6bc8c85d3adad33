"""`make dev` refuses to start twice: its instance and ports are checked before anything runs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from stripe_crm_pipelines.local import dev

PROJECT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def listening():
    """A port another program already listens on."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


def launch(tmp_path: Path, *, port: int, sandbox_port: int, shortener_port: int):
    """The launcher as `make dev` runs it, on a private instance and store."""
    return subprocess.run(
        [sys.executable, "-m", "stripe_crm_pipelines.dev", "--project-dir", str(PROJECT),
         "--dagster-home", str(tmp_path / "dagster_home"), "--store-dir", str(tmp_path / "store"),
         "--port", str(port), "--sandbox-port", str(sandbox_port),
         "--shortener-port", str(shortener_port)],
        env={key: value for key, value in os.environ.items() if key != "MONGODB_URI"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_taken_port_stops_it_before_anything_starts(tmp_path, listening):
    ui_port, shortener_port = free_port(), free_port()

    result = launch(tmp_path, port=ui_port, sandbox_port=listening, shortener_port=shortener_port)

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"make dev cannot start: port {listening} (Stripe sandbox, --sandbox-port) is already "
        "in use by another program; stop it or choose another port"
    ]
    assert result.stdout == ""
    # Nothing was started or written: the other ports are still free, no store, no instance.
    assert dev._port_free(ui_port) and dev._port_free(shortener_port)
    assert not (tmp_path / "store").exists()
    assert not (tmp_path / "dagster_home" / "dagster.yaml").exists()


def test_every_taken_port_is_named(tmp_path, listening):
    with socket.socket() as second:
        second.bind(("127.0.0.1", 0))
        second.listen()
        other = second.getsockname()[1]

        result = launch(tmp_path, port=listening, sandbox_port=free_port(), shortener_port=other)

    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"make dev cannot start: ports {listening} (Dagster UI, --port), {other} (URL shortener, "
        "--shortener-port) are already in use by another program; stop it or choose another port"
    )


def test_a_running_launcher_on_the_same_instance_stops_a_second(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    held = dev.claim_instance(home)  # as the first launcher holds it
    try:
        result = launch(
            tmp_path, port=free_port(), sandbox_port=free_port(), shortener_port=free_port()
        )
    finally:
        held.close()

    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"make dev is already running on {home.resolve()} (pid {os.getpid()}); stop it with "
        "Ctrl-C in its terminal, or give this one another --dagster-home"
    )
    assert not (tmp_path / "store").exists()


def test_the_instance_is_free_again_once_the_launcher_is_gone(tmp_path):
    first = dev.claim_instance(tmp_path)
    first.close()

    second = dev.claim_instance(tmp_path)
    try:
        assert (tmp_path / dev.INSTANCE_LOCK).read_text() == f"{os.getpid()}\n"
    finally:
        second.close()


def test_a_port_out_of_range_is_refused_by_name(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        dev.main(["--project-dir", str(PROJECT), "--port", "70000"])

    assert stopped.value.code == 2
    assert "argument --port: '70000' is not a port number (1 to 65535)" in capsys.readouterr().err


def test_a_directory_that_is_not_the_project_is_refused_before_anything_is_written(
    tmp_path, capsys
):
    with pytest.raises(SystemExit) as stopped:
        dev.main(["--project-dir", str(tmp_path)])

    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"{tmp_path} is not the project directory (no workspace.yaml or dagster.yaml)" in err
    assert list(tmp_path.iterdir()) == []


def test_an_unsupported_mongodb_uri_is_refused_before_anything_starts(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("MONGODB_URI", "foo://x")

    with pytest.raises(SystemExit) as stopped:
        dev.main(["--project-dir", str(PROJECT), "--dagster-home", str(tmp_path / "home")])

    assert stopped.value.code == 2
    assert "MONGODB_URI scheme 'foo' is not supported" in capsys.readouterr().err
    assert not (tmp_path / "home").exists()
