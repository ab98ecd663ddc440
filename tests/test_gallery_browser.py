"""Open the generated index.html in headless Chromium: every image loads, nothing is fetched from
outside the output folder, and a hostile prompt does not run script.

Needs the system Chromium and the Playwright Python package (no Playwright browser download):
    apt-get install -y chromium
    pip install -c constraints.txt playwright
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest

try:  # tests/ is not a package: pytest puts it on sys.path ("prepend" import mode)
    from test_report import EVIL, make_run, write
except ImportError:  # pragma: no cover - if tests/ becomes a package
    from tests.test_report import EVIL, make_run, write

CHROMIUM = os.environ.get("TEXTSR_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-dev-shm-usage"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)),
                       reason=f"no Chromium at {CHROMIUM} (apt-get install -y chromium, or set TEXTSR_CHROMIUM)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                       reason="Python package playwright missing (pip install -c constraints.txt playwright)"),
]

ALL_IMAGES = """() => Array.from(document.images).map(i => ({src: i.src, ok: i.complete && i.naturalWidth > 0}))"""


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def test_gallery_loads_all_images_offline(browser, tmp_path):
    paths = write(tmp_path, make_run(prompts=("a red circle", "a blue <b>square</b>", EVIL)))
    page = browser.new_page()
    requests, errors = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: (errors.append(f"dialog: {d.message}"), d.dismiss()))
    page.goto(paths["index.html"].as_uri(), wait_until="load")

    images = page.evaluate(ALL_IMAGES)
    n_samples = 3 * 3
    assert len(images) == 3 + n_samples + 3  # input/nearest/bicubic, samples, one std map per prompt
    broken = [i["src"] for i in images if not i["ok"]]
    assert broken == [], f"images that did not load: {broken}"

    outside = [u for u in requests if not u.startswith(tmp_path.as_uri())]
    assert outside == [], f"the page fetched something outside the output folder: {outside}"
    assert page.evaluate("() => window.__pwned === undefined") and errors == []
    headings = page.locator("h2").all_inner_texts()
    assert any("a blue <b>square</b>" in h for h in headings)  # shown as text, not markup
    assert page.locator("b").count() == 0
    page.close()
