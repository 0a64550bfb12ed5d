"""The trials of a search can be browsed in the MLflow UI: a real server, a real browser."""

import os
import shutil
from pathlib import Path

import pytest
from conftest import tiny_search

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.mark.browser
def test_parent_and_nested_trials_appear_in_the_mlflow_ui(mlflow_server, search_env, tiny_dir):
    if not shutil.which("chromium"):
        reason = "Debian's chromium is needed: install it as root (apt-get install chromium)"
        if os.environ.get("CI"):  # CI has root and installs it: never skip there
            pytest.fail(reason)
        pytest.skip(f"{reason}, then run make test (or pytest -m browser)")
    from playwright.sync_api import sync_playwright

    res = tiny_search(
        search_env, tiny_dir, trials=2, concurrency=1, tracking_uri=mlflow_server, name="browsed"
    )
    url = f"{mlflow_server}/#/experiments/{res.experiment_id}/runs"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(url)
            page.get_by_text("browsed").first.wait_for(timeout=60000)
            # Child runs sit collapsed under their parent: expand it as a user would.
            page.get_by_role("row").filter(has_text="browsed").first.locator("button").first.click()
            for name in ("trial-000", "trial-001"):
                page.get_by_text(name).first.wait_for(timeout=30000)
            page.screenshot(path=str(ARTIFACTS / "mlflow-runs.png"))
            # the parent and its two trials (the count settles once the rows have loaded)
            page.get_by_text("3 matching runs").first.wait_for(timeout=30000)
        finally:
            browser.close()
