"""Issue 10 item 2 in headless Chromium: prompt text is shown as text everywhere in the web app (sweep
preview, summary table, notes, consistency check, error pop-ups). With the issue's three prompts no
dialog opens, no request leaves 127.0.0.1 and each prompt is displayed literally.

Needs the system Chromium and the playwright package (see test_app_browser.py)."""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest

CHROMIUM = os.environ.get("TEXTSR_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-dev-shm-usage"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
    pytest.mark.skipif(not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)),
                       reason=f"no Chromium at {CHROMIUM} (apt-get install -y chromium, or set TEXTSR_CHROMIUM)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                       reason="Python package playwright missing (pip install -c constraints.txt playwright)"),
    pytest.mark.skipif(importlib.util.find_spec("gradio") is None,
                       reason="gradio missing (pip install -c constraints.txt 'textsr[app]')"),
]

try:  # tests/ is not a package: pytest puts it on sys.path
    from test_app import StubBackend, free_port, lr_image
except ImportError:  # pragma: no cover
    from tests.test_app import StubBackend, free_port, lr_image

PROMPTS = [
    '<svg><a href="javascript:alert(document.domain)"><text y="1em">a red circle</text></a></svg>',
    "<img src=http://host/t.png>",
    "<script>alert(1)</script>",
]
MARKDOWN = ["[click me](javascript:alert(2)) **bold** $$x$$ | pipe"]
ZONES = ["#prompt-preview", "#summary", "#cmp-text", "#input-info"]


@pytest.fixture(scope="module")
def url():
    from textsr.app import launch

    port = free_port()
    app = launch(port=port, block=False, quiet=True, model_choices={"stub": StubBackend()})
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.close()
        app.textsr_workdir.close()


@pytest.fixture()
def page(url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        pg = browser.new_page(viewport={"width": 1440, "height": 1000})
        pg.textsr = {"dialogs": [], "requests": [], "outside": []}

        def route(r):
            u = r.request.url
            pg.textsr["requests"].append(u)
            if u.startswith(url) or u.startswith("data:") or u.startswith("blob:"):
                r.continue_()
            else:  # record and stop it: nothing may leave this machine
                pg.textsr["outside"].append(u)
                r.abort()

        pg.route("**/*", route)
        pg.on("dialog", lambda d: (pg.textsr["dialogs"].append(d.message), d.dismiss()))
        pg.goto(url, wait_until="load")
        pg.wait_for_selector("#run-button")
        yield pg
        browser.close()


def no_markup_from_text(page) -> None:
    for zone in ZONES:
        for sel in ("svg text", "img", "script", "a[href^='javascript']", "strong:text-is('bold')", ".katex"):
            found = page.locator(f"{zone} {sel}")
            assert found.count() == 0, f"{zone} renders user text as markup: {sel} ({found.count()})"


def click_every_link(page) -> None:
    for zone in ZONES:
        links = page.locator(f"{zone} a")
        for k in range(links.count()):
            links.nth(k).click(timeout=2000, no_wait_after=True)


def test_prompts_are_shown_as_text(page, tmp_path):
    from playwright.sync_api import expect

    page.locator("#lr-input input[type=file]").set_input_files(str(lr_image(tmp_path / "in.png")))
    expect(page.locator("#input-info")).to_contain_text("at ×8", timeout=15_000)
    page.locator("#prompts textarea").fill("\n".join(PROMPTS + MARKDOWN))
    preview = page.locator("#prompt-preview")
    expect(preview).to_contain_text("4 prompts", timeout=10_000)
    for p in PROMPTS + MARKDOWN:
        assert p in preview.inner_text(), (p, preview.inner_text())
    page.get_by_text("Advanced").click()
    page.locator("#steps input").fill("3")
    page.locator("#steps input").press("Tab")
    page.locator("#run-button").click()
    expect(page.locator("#summary")).to_contain_text("Done in", timeout=120_000)
    summary = page.locator("#summary").inner_text()
    for p in PROMPTS + MARKDOWN:
        assert p in summary, (p, summary)
    rows = page.locator("#summary table tbody tr")
    assert [rows.nth(k).locator("td").first.inner_text() for k in range(rows.count())] == PROMPTS + MARKDOWN
    assert PROMPTS[0] in page.locator("#cmp-text").inner_text()
    captions = page.locator("#sample-gallery .caption-label").all_inner_texts()
    assert captions and all(any(c.startswith(p) for p in PROMPTS + MARKDOWN) for c in captions), captions
    no_markup_from_text(page)
    click_every_link(page)
    page.locator("#summary table").click()
    page.wait_for_timeout(500)
    assert page.textsr["dialogs"] == []
    assert page.textsr["outside"] == [], page.textsr["outside"]


def test_error_messages_with_user_text_are_text(page, tmp_path):
    from playwright.sync_api import expect

    evil_template = "<img src=http://host/t2.png onerror=alert(3)>{a}{b}"
    page.locator("#lr-input input[type=file]").set_input_files(str(lr_image(tmp_path / "in.png")))
    expect(page.locator("#input-info")).to_contain_text("at ×8", timeout=15_000)
    page.get_by_text("Prompt sweep").click()
    page.locator("#template textarea, #template input").first.fill(evil_template)
    page.locator("#values textarea, #values input").first.fill("x,y")
    expect(page.locator("#prompt-preview")).to_contain_text("exactly one", timeout=10_000)
    assert evil_template in page.locator("#prompt-preview").inner_text()
    page.locator("#run-button").click()  # the same message as an error pop-up (which renders HTML)
    toasts = page.locator(".toast-body, [data-testid='toast-body']")
    expect(toasts.first).to_be_visible(timeout=15_000)
    page.wait_for_timeout(1000)
    assert any(evil_template in t for t in toasts.all_inner_texts()), toasts.all_inner_texts()
    assert page.locator(".toast-body img, [data-testid='toast-body'] img").count() == 0
    no_markup_from_text(page)
    assert page.textsr["dialogs"] == []
    assert page.textsr["outside"] == [], page.textsr["outside"]
