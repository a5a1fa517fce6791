"""The docs page works where Backsync runs: in a real headless Chromium, `/docs` loads
with no request leaving the machine, the Authorize button takes an API key, and "Try it
out" gets a 200 from the running API (issue: a product people can pick up).

Debian's `chromium` package is the browser (`.ci/run` installs it; playwright drives the
system browser and downloads nothing). Without it the test is skipped with that reason,
except in CI (`CI` set), where a missing browser fails it.
"""

from __future__ import annotations

import os
import shutil
from urllib.parse import urlparse

import pytest
from playwright.async_api import Route, async_playwright

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LOOPBACK = {"127.0.0.1", "localhost"}

if CHROMIUM is None and os.environ.get("CI"):
    raise RuntimeError("CI must have Debian's chromium installed (.ci/run installs it)")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium): docs page NOT tested"
)


async def test_the_docs_page_works_offline_and_try_it_out_succeeds(
    served: str, auth: dict[str, str]
) -> None:
    key = auth["Authorization"].removeprefix("Bearer ")
    outside: list[str] = []

    async def loopback_only(route: Route) -> None:
        if urlparse(route.request.url).hostname in LOOPBACK:
            await route.continue_()
        else:
            outside.append(route.request.url)
            await route.abort()

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = await browser.new_page()
            await page.route("**/*", loopback_only)
            await page.goto(f"{served}/docs")
            await page.click("button.authorize")
            await page.fill(".modal-ux input", key)
            await page.click(".modal-ux button.authorize")
            await page.click(".modal-ux button.btn-done")
            operation = page.locator("#operations-tasks-list_tasks")
            await operation.locator(".opblock-summary").click()
            await operation.locator("button.try-out__btn").click()
            await operation.locator("button.execute").click()
            status = operation.locator(
                ".live-responses-table tr.response .response-col_status"
            ).first
            await status.wait_for(timeout=15_000)
            shown = (await status.inner_text()).strip()
            body = await operation.locator(".live-responses-table .microlight").first.inner_text()
        finally:
            await browser.close()

    assert shown == "200", body
    assert '"items"' in body
    assert outside == []  # Swagger UI's files came from the server itself
