"""Screenshots of `mlflow ui` (on 127.0.0.1:5055) for the README: the runs table and the chart view.

Run with a Python that has playwright, Debian's chromium installed: python docs/mlflow_screenshots.py docs/
"""
import pathlib
import sys

from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

out = pathlib.Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
base = "http://127.0.0.1:5055"
with sync_playwright() as p:
    b = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=[
        "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"])
    page = b.new_page(viewport={"width": 1500, "height": 800})
    page.goto(base + "/#/experiments/1/runs"); page.wait_for_timeout(8000)
    for sel in ['[aria-label="Close"]', 'button:has-text("×")']:
        try:
            page.locator(sel).last.click(timeout=2000); break
        except PlaywrightTimeout:  # no assistant panel to close
            print("no", sel)
    page.wait_for_timeout(1500)
    page.screenshot(path=str(out / "mlflow-runs.png"))
    # the chart view: every run's metrics, val_f1 among them
    page.mouse.click(296, 120)
    page.wait_for_timeout(6000)
    page.screenshot(path=str(out / "mlflow-charts.png"))
    b.close()
