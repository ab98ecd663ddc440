"""The web app end to end in headless Chromium: upload an image, enter two prompts, explore, see the
gallery with its metrics, click a sample, and nothing is fetched from outside the app.

Runs on the built-in shapes model (the stub from test_app.py if builtin-shapes cannot load). Needs
the system Chromium and the Playwright Python package (Playwright's own browser download is not used):
    apt-get install -y chromium
    pip install -c constraints.txt playwright gradio_client 'gradio>=5'
TEXTSR_SAVE_SCREENSHOT=1 writes docs/app-screenshot.png (else the screenshot goes to tmp).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = os.environ.get("TEXTSR_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-dev-shm-usage"]
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "app-screenshot.png"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),  # inside gradio's queue (pandas 3)
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
    pytest.mark.skipif(not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)),
                       reason=f"no Chromium at {CHROMIUM} (apt-get install -y chromium, or set TEXTSR_CHROMIUM)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                       reason="Python package playwright missing (pip install -c constraints.txt playwright)"),
    pytest.mark.skipif(importlib.util.find_spec("gradio") is None,
                       reason="gradio missing (pip install -c constraints.txt 'textsr[app]')"),
]

try:  # tests/ is not a package: pytest puts it on sys.path ("prepend" import mode)
    from test_app import StubBackend, builtin_available, free_port, lr_image
except ImportError:  # pragma: no cover
    from tests.test_app import StubBackend, builtin_available, free_port, lr_image


def fill_number(page, selector: str, value: int, tries: int = 5) -> None:
    """Type into a number field until it holds ``value`` (a field in a just-opened accordion may be
    re-rendered once, dropping the first input)."""
    field = page.locator(selector)
    for _ in range(tries):
        field.fill(str(value))
        field.press("Tab")
        page.wait_for_timeout(300)
        if field.input_value() == str(value):
            return
    raise AssertionError(f"{selector} does not take the value {value}; it shows {field.input_value()!r}")


def demo_input(path: Path) -> Path:
    """The demo's 8x8 input (a small red circle on blue, pooled 8x), as the PNG a person would upload."""
    from textsr.demo import demo_image

    Image.fromarray(np.rint(demo_image() * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from textsr.app import launch

    why = builtin_available()
    choices = None if why is None else {"stub": StubBackend()}
    port = free_port()
    app = launch(port=port, block=False, quiet=True, model_choices=choices)
    try:
        yield f"http://127.0.0.1:{port}/", ("builtin-shapes" if why is None else "stub"), why
    finally:
        app.close()
        app.textsr_workdir.close()


def test_explore_in_the_browser(served, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, model, why = served
    if why:
        print(f"note: using the stub model ({why})")
    save = os.environ.get("TEXTSR_SAVE_SCREENSHOT") == "1"
    samples, steps = 4, (50 if save else 20)
    image = demo_input(tmp_path / "input.png") if model == "builtin-shapes" else lr_image(tmp_path / "input.png")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        requests, errors = [], []
        page.on("request", lambda r: requests.append(r.url))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url, wait_until="load")
        page.wait_for_selector("#run-button")

        page.locator("#lr-input input[type=file]").set_input_files(str(image))
        expect(page.locator("#input-info")).to_contain_text("at ×8 the samples are 64×64", timeout=15_000)
        page.locator("#prompts textarea").fill("a red circle\na crimson star")
        expect(page.locator("#prompt-preview")).to_contain_text("2 prompts")
        page.locator("#n-samples input[type=number]").fill(str(samples))
        page.locator("#n-samples input[type=number]").press("Enter")
        page.get_by_text("Advanced").click()
        fill_number(page, "#steps input", steps)

        t0 = time.perf_counter()
        page.locator("#run-button").click()
        thumbs = page.locator("#sample-gallery .thumbnail-item img")
        expect(thumbs).to_have_count(2 * samples, timeout=180_000)
        expect(page.locator("#summary")).to_contain_text("Done in", timeout=30_000)
        want = f"{steps} steps" if model == "stub" else f"{steps}+{steps} steps"
        expect(page.locator("#summary")).to_contain_text(want)
        seconds = time.perf_counter() - t0
        captions = page.locator("#sample-gallery .caption-label").all_inner_texts()
        assert len(captions) == 2 * samples
        assert all("LR-PSNR" in c and " dB" in c and "text " in c for c in captions), captions
        assert captions[0].startswith("a red circle") and captions[-1].startswith("a crimson star")
        expect(page.locator("#summary table")).to_contain_text("text consistency")
        expect(page.locator("#std-gallery .thumbnail-item img")).to_have_count(2)
        expect(page.locator("#baseline-gallery .thumbnail-item img")).to_have_count(2)
        expect(page.locator("#download")).to_contain_text(".zip")
        expect(page.locator("#cmp-text")).to_contain_text("sample #0")

        thumbs.nth(samples + 1).click()  # the second sample of the second prompt
        expect(page.locator("#cmp-text")).to_contain_text("a crimson star", timeout=15_000)
        expect(page.locator("#cmp-text")).to_contain_text("sample #1")
        page.keyboard.press("Escape")  # leave the gallery's preview for the screenshot
        page.mouse.move(0, 0)
        page.wait_for_timeout(500)
        shot = SCREENSHOT if save else tmp_path / "app-screenshot.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
        browser.close()

    outside = [u for u in requests if not u.startswith(url) and not u.startswith("data:") and not u.startswith("blob:")]
    assert outside == [], f"the page fetched something from outside the app: {outside}"
    assert errors == [], errors
    print(f"{model}: 2 prompts x {samples} samples x {steps} steps; "
          f"result in the browser {seconds:.1f} s after the click; "
          f"screenshot {shot}")
