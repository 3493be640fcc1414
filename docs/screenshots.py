"""The README's screenshots, taken in headless Debian Chromium (playwright drives it).

    python docs/screenshots.py dashboard docs/   # a search running, its dashboard on :8265
    python docs/screenshots.py mlflow docs/      # `mlflow ui ... --port 5055` on a tracked search

Needs a Python with `playwright` (its bundled driver; no browser download) and Debian's
`chromium`.
"""
import pathlib
import sys

from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def dashboard(browser, out: pathlib.Path) -> None:
    base = "http://127.0.0.1:8265"
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(base + "/#/overview")  # without the token: the login prompt
    page.wait_for_timeout(4000)
    page.screenshot(path=str(out / "dashboard-login.png"))
    token = (pathlib.Path.home() / ".ray" / "auth_token").read_text().strip()
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.add_cookies([{"name": "ray-authentication-token", "value": token, "url": base}])
    page = context.new_page()
    for name in ("overview", "jobs", "actors", "cluster"):
        page.goto(f"{base}/#/{name}")
        page.wait_for_timeout(5000)
        page.screenshot(path=str(out / f"dashboard-{name}.png"))


def mlflow(browser, out: pathlib.Path) -> None:
    page = browser.new_page(viewport={"width": 1500, "height": 800})
    page.goto("http://127.0.0.1:5055/#/experiments/1/runs")
    page.wait_for_timeout(8000)
    try:
        page.locator('[aria-label="Close"]').last.click(timeout=2000)  # the assistant panel
    except PlaywrightTimeout:
        pass
    page.wait_for_timeout(1500)
    page.screenshot(path=str(out / "mlflow-runs.png"))
    page.mouse.click(296, 120)  # the chart view's tab
    page.wait_for_timeout(6000)
    page.screenshot(path=str(out / "mlflow-charts.png"))


if __name__ == "__main__":
    which, out = sys.argv[1], pathlib.Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                    args=CHROMIUM_ARGS)
        {"dashboard": dashboard, "mlflow": mlflow}[which](browser, out)
        browser.close()
