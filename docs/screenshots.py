"""Screenshots of the Ray dashboard during a real search (headless Debian chromium), for the README.

Start a search with the dashboard on 127.0.0.1:8265, then, with a Python that has playwright:
python docs/screenshots.py docs/
"""
import pathlib
import sys

from playwright.sync_api import sync_playwright

out = pathlib.Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
token = (pathlib.Path.home() / ".ray" / "auth_token").read_text().strip()
base = "http://127.0.0.1:8265"
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=[
        "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"])
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    # without the token: the login prompt
    page.goto(base + "/#/overview"); page.wait_for_timeout(4000)
    page.screenshot(path=str(out / "dashboard-login.png"))
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    ctx.add_cookies([{"name": "ray-authentication-token", "value": token, "url": base}])
    page = ctx.new_page()
    for name, frag in [("overview", "/#/overview"), ("jobs", "/#/jobs"), ("actors", "/#/actors"),
                       ("cluster", "/#/cluster")]:
        page.goto(base + frag); page.wait_for_timeout(5000)
        page.screenshot(path=str(out / f"dashboard-{name}.png"))
        print(name, page.title())
    browser.close()
