"""The Prefect UI of the shared e2e stack in headless Chromium (Debian's ``chromium`` package,
driven by Playwright): a custom run of ``inactive-accounts`` from its run form, with ``dry_run``
on and an ``as_of`` date, followed to Completed and to its summary artifact.

Selectors follow the v2 UI's source (ui-v2/src in PrefectHQ/prefect): the deployment's "Run"
menu and its "Custom run" item (run-flow-button.tsx), the parameter form whose labels are the
parameters' titles plus " (Optional)" (schemas/schema-form-property-label.tsx), the date-time
picker's day buttons keyed by ``data-day`` (ui/calendar.tsx), and the run page's tabs.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from prefect.settings import PREFECT_API_URL, temporary_settings

from tests.support.clock import days_ago
from tests.support.e2e import E2EStack
from tests.support.factories import insert_user, user_row
from tests.support.prefect_stack import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

CHROMIUM = Path("/usr/bin/chromium")
#: Screenshots land here (git-ignored), one folder per test.
OUTPUT = ROOT / "test-output"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Path:
    """This test's screenshot folder, emptied."""
    folder = OUTPUT / request.node.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def page(browser: Browser, shots: Path) -> Iterator[Page]:
    """A page in UTC and US English (the date picker's formats); its last screenshot kept."""
    context = browser.new_context(
        locale="en-US", timezone_id="UTC", viewport={"width": 1440, "height": 1000}
    )
    page = context.new_page()
    page.set_default_timeout(60_000)  # a loaded 2-core machine
    try:
        yield page
    finally:
        page.screenshot(path=shots / "last.png", full_page=True)
        context.close()


def test_custom_dry_run_from_the_run_form_completes_with_its_summary(
    e2e_stack: E2EStack, page: Page, shots: Path
) -> None:
    as_of = (datetime.now(UTC) - timedelta(days=7)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    due = insert_user(e2e_stack.engine, last_visit_at=days_ago(70, before=as_of))

    page.goto(e2e_stack.server.url)
    expect(page).to_have_url(re.compile(r"/v2/"))  # the pinned UI: / redirects to it
    page.get_by_role("link", name="Deployments").click()
    page.get_by_role("link", name="inactive-accounts").first.click()
    page.get_by_role("button", name="Run").click()
    page.get_by_role("menuitem", name="Custom run").click()

    dry_run = page.get_by_label("Dry run (Optional)")
    dry_run.click()
    expect(dry_run).to_be_checked()
    page.get_by_role("tab", name="date-time").click()  # As of: a date-time, not None
    page.get_by_role("button", name="MM/DD/YYYY hh:mm aa").click()
    page.locator(f'button[data-day="{as_of.month}/{as_of.day}/{as_of.year}"]').click()
    page.keyboard.press("Escape")
    expect(page.get_by_text(f"{as_of:%m/%d/%Y} 12:00 AM")).to_be_visible()
    page.screenshot(path=shots / "run-form.png", full_page=True)
    name = page.get_by_label("Run Name").input_value()
    page.get_by_role("button", name="Submit").click()
    run_id = created_run(e2e_stack, name)  # by the form (a loaded server answers it slowly)
    page.goto(f"{e2e_stack.server.url}/v2/runs/flow-run/{run_id}")
    run = e2e_stack.wait(run_id)
    assert run.state is not None and run.state.is_completed(), run.state
    page.reload()  # the page refreshes itself only while the run is Pending or Running
    expect(page.get_by_text("Completed", exact=True)).to_be_visible()
    page.get_by_role("tab", name="Artifacts").click()
    key = f"inactive-accounts-dry-run-{as_of:%Y%m%d-%H%M%S}-{str(run_id)[:8]}"
    page.get_by_text(key).click()
    page.get_by_test_id(re.compile("^timeline-card-")).get_by_role("link").first.click()
    expect(page.get_by_test_id("table-display")).to_be_visible()
    expect(page.get_by_text("dry_run=True").first).to_be_visible()
    expect(page.get_by_role("cell", name="would_warn", exact=True)).to_be_visible()
    page.screenshot(path=shots / "summary-artifact.png", full_page=True)

    sent = {name: run.parameters[name] for name in ("as_of", "dry_run")}  # and the defaults
    assert sent == {"as_of": as_of.strftime("%Y-%m-%dT%H:%M:%SZ"), "dry_run": True}
    row = user_row(e2e_stack.engine, due)
    assert row is not None and row.deletion_warning_sent_at is None  # a dry run


def created_run(stack: E2EStack, name: str, timeout: float = 180) -> UUID:
    """The id of the flow run named ``name``, once the server has it."""
    deadline = time.monotonic() + timeout
    with temporary_settings({PREFECT_API_URL: stack.server.api_url}):
        with get_client(sync_client=True) as client:
            while not (
                runs := client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
                )
            ):
                assert time.monotonic() < deadline, f"the form created no run {name!r}"
                time.sleep(1)
    return runs[0].id
