"""The local shortener and the resource that talks to it."""

import socket
import subprocess
import sys
import time

import pytest
import requests

from stripe_crm_pipelines.local.shortener import main, start_local_shortener
from stripe_crm_pipelines.resources.shortener import ShortenerResource

LONG_URL = "https://invoice.stripe.com/i/acct_1/test_abc?s=ap"


@pytest.fixture
def shortener():
    with start_local_shortener() as server:
        yield server


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_short_url_redirects_to_the_long_one(shortener):
    answer = requests.post(f"{shortener.url}/", json={"url": LONG_URL}, timeout=5)
    assert answer.status_code == 201
    short_url = answer.json()["short_url"]
    assert short_url.startswith(shortener.url + "/")
    redirect = requests.get(short_url, allow_redirects=False, timeout=5)
    assert redirect.status_code == 302
    assert redirect.headers["Location"] == LONG_URL
    again = requests.post(f"{shortener.url}/", json={"url": LONG_URL}, timeout=5)
    assert again.json()["short_url"] == short_url


@pytest.mark.parametrize("body", [{"url": "ftp://x"}, {"link": LONG_URL}, [1]])
def test_bad_requests_are_refused(shortener, body):
    answer = requests.post(f"{shortener.url}/", json=body, timeout=5)
    assert answer.status_code == 400
    assert requests.get(f"{shortener.url}/unknown", timeout=5).status_code == 404


def test_health_and_link_count(shortener):
    assert requests.get(f"{shortener.url}/health", timeout=5).json() == {"status": "ok"}
    shortener.shorten(LONG_URL)
    assert requests.get(f"{shortener.url}/", timeout=5).json() == {"links": 1}


def test_resource_shortens(shortener):
    result = ShortenerResource(base_url=shortener.url).shorten(LONG_URL)
    assert result.shortened
    assert result.problem is None
    assert shortener.resolve(result.url.rsplit("/", 1)[1]) == LONG_URL


def test_resource_keeps_the_long_url_when_unset():
    result = ShortenerResource().shorten(LONG_URL)
    assert (result.url, result.shortened, result.problem) == (LONG_URL, False, None)


def test_resource_keeps_the_long_url_when_down():
    result = ShortenerResource(base_url=closed_port_url(), timeout_seconds=2).shorten(LONG_URL)
    assert result.url == LONG_URL
    assert not result.shortened
    assert "ConnectionError" in result.problem


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    assert "--port" in capsys.readouterr().out


@pytest.mark.parametrize("quiet", [False, True], ids=["access-log", "quiet"])
def test_runs_as_a_module(quiet):
    port = int(closed_port_url().rsplit(":", 1)[1])
    process = subprocess.Popen(
        [sys.executable, "-m", "stripe_crm_pipelines.local.shortener", "--port", str(port)]
        + (["--quiet"] if quiet else []),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                requests.get(f"{url}/health", timeout=1).raise_for_status()
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "the shortener did not start"
                time.sleep(0.05)
        answer = requests.post(f"{url}/", json={"url": LONG_URL}, timeout=5)
        assert answer.json()["short_url"].startswith(f"{url}/")
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    assert ('"POST / HTTP/1.1" 201' in stderr) is not quiet
    assert "local shortener listening on" in stderr
