"""The Dagster UI of `make dev`, checked in a real browser (headless Chromium via Selenium).

Starts the dev launcher (dagster dev on the embedded defaults, the sandbox, demo data) on free
ports, waits for the sensor-driven demo import to complete, then opens the UI as a person would
and checks what they would look for: both jobs listed, the import sensor running, the finished
import run with its tags, and the run's counts. Screenshots land in the test's tmp_path.

Needs Debian's ``chromium`` and ``chromium-driver`` (/usr/bin/chromium, /usr/bin/chromedriver)
and the ``selenium`` package; skipped with the reason when one is missing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import import tags
from stripe_crm_pipelines.local import demo
from tests.devstack import SENSOR_INTERVAL_SECONDS

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("CHROMIUM_BINARY", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1440,1000",
)
LOCATION = "stripe_crm_pipelines"
IMPORT_DEADLINE_SECONDS = 120
PAGE_DEADLINE_SECONDS = 30
IMPORT_TYPES = {"person": "contacts", "business": "companies"}


def _browser_missing() -> str | None:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return f"{path} not found: install Debian's {package} (apt-get install -y {package})"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package is not installed (pip install -e '.[test]')"
    return None


if reason := _browser_missing():
    pytest.skip(reason, allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def browser(tmp_path) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The UI as a person reads it: visible text, waited for, with a screenshot per page."""

    def __init__(self, driver: webdriver.Chrome, base_url: str, shots: Path):
        self.driver = driver
        self.base_url = base_url
        self.shots = shots

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)
        self._dismiss_welcome_dialog()

    def text(self) -> str:
        """The visible text, whitespace collapsed (table cells read "records_added 234")."""
        return " ".join(self.driver.find_element(By.TAG_NAME, "body").text.split())

    def wait_for_text(self, *needles: str, timeout: float = PAGE_DEADLINE_SECONDS) -> str:
        """Wait until every needle is visible on the page; return the page text."""
        try:
            WebDriverWait(self.driver, timeout, poll_frequency=0.5).until(
                lambda _: all(needle in self.text() for needle in needles)
            )
        except TimeoutException:
            self.screenshot("timeout")
            missing = [needle for needle in needles if needle not in self.text()]
            pytest.fail(
                f"{self.driver.current_url} never showed {missing}; it shows:\n{self.text()[:3000]}"
            )
        self._dismiss_welcome_dialog()
        return self.text()

    def filter_run_events(self, query: str) -> None:
        """Type into the run page's event log filter, as in ``type:ASSET_MATERIALIZATION``."""
        box = self.driver.find_element(By.CSS_SELECTOR, "input[placeholder^='Filter']")
        box.send_keys(query)
        box.send_keys(Keys.ENTER)

    def switch_is_on(self, row_label: str) -> bool:
        """Whether the toggle in the table row labelled ``row_label`` is switched on."""
        switch = self.driver.find_element(
            By.XPATH, f"//tr[td[normalize-space()='{row_label}']]//input[@type='checkbox']"
        )
        return switch.is_selected()

    def click_button(self, label: str) -> None:
        self.driver.find_element(By.XPATH, f"//button[normalize-space()='{label}']").click()

    def screenshot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def _dismiss_welcome_dialog(self) -> None:
        # The dev instance shows a one-time "Join the Dagster community" dialog over the page.
        skip = "//button[normalize-space()='Skip']"
        for button in self.driver.find_elements(By.XPATH, skip):
            if button.is_displayed():
                button.click()
                WebDriverWait(self.driver, 5).until(
                    lambda driver: not driver.find_elements(By.XPATH, skip)
                )


def test_ui_shows_jobs_sensor_and_the_finished_import(dev_stack, browser, tmp_path):
    request = dev_stack.wait(
        lambda: _finished_request(dev_stack.db), IMPORT_DEADLINE_SECONDS, "the demo import"
    )
    assert request["status"] == "completed", dev_stack.log.read_text()[-5000:]
    # Other slow tests share this stack and may import for the demo account too, and the demo
    # keeps its account in sync: the UI shows the newest import first, so check that one.
    result = dev_stack.db[store.IMPORT_RESULTS].find_one(
        {
            "account_id": {"$in": [demo.DEMO_ACCOUNT_ID, str(demo.DEMO_ACCOUNT_ID)]},
            "name": "stripe",
        },
        sort=[("finished_at", -1)],
    )

    check_import_in_ui(Page(browser, dev_stack.url, tmp_path), result)


def check_import_in_ui(page: Page, result: dict) -> None:
    """What a person checks after an import, page by page; ``result`` is its stored result."""
    run_id = result["run_id"]
    import_id = str(result["import_id"])
    account_id = str(demo.DEMO_ACCOUNT_ID)
    # The first counts of the event: the run page folds the rest under "View full message".
    counts = {name: result[name] for name in ("records_added", "records_updated")}
    assert counts["records_added"] > 0

    page.open("/jobs")
    page.wait_for_text("billing_contact_import", "create_payment_link")
    page.screenshot("1-jobs")

    page.open(f"/locations/{LOCATION}/sensors/billing_import_sensor")
    # The stack's interval (tests.devstack), which the sensor page shows as the daemon has it.
    page.wait_for_text(
        "billing_import_sensor", "billing_contact_import", f"~{SENSOR_INTERVAL_SECONDS} sec"
    )
    assert page.switch_is_on("Running"), "billing_import_sensor is not running"
    page.screenshot("2-sensor")

    page.open(f"/runs?q%5B0%5D=tag%3A{tags.IMPORT_ID}%3D{import_id}")
    page.wait_for_text(
        run_id[:8],
        "Success",
        "billing_import_sensor",
        f"{tags.IMPORT_ID}: {import_id}",
        f"{tags.ACCOUNT_ID}: {account_id}",
        f"{tags.IMPORT_TYPE}: {IMPORT_TYPES[result['type']]}",
        f"{tags.USER_ID}: {demo.DEMO_USER_ID}",
        f"{tags.STRIPE_ACCOUNT}: {demo.DEMO_STRIPE_ACCOUNT}",
    )
    page.screenshot("3-runs")

    page.open(f"/runs/{run_id}")
    page.wait_for_text("Success", "billing_contact_import", "crm_contacts", account_id)
    page.filter_run_events("type:ASSET_MATERIALIZATION")
    page.wait_for_text(*(f"{name} {value} " for name, value in counts.items()))
    page.screenshot("4-run-counts")
    page.click_button("View tags and config")
    page.wait_for_text(f"{tags.IMPORT_ID}: {import_id}", f"run_key: {import_id}:")
    page.screenshot("5-run-tags")

    # The account's partition lists its imports and, after them, the demo's syncs every ~30 s:
    # the newest event shown is the import only until the first sync.
    page.open(f"/assets/crm_contacts?view=events&partition={account_id}")
    page.wait_for_text("crm_contacts", f"Partition {account_id} materialized in run")
    page.screenshot("6-account-history")


def _finished_request(db) -> dict | None:
    document = db[store.QUEUES].find_one({"_id": demo.DEMO_IMPORT_ID})
    return document if document and document["status"] != "pending" else None
