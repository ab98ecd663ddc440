"""Prompts are at most ``validate.MAX_PROMPT_CHARS`` characters, on every front end (issue 21, defect 5): the
API, the command line, templates and their values, batch manifests (when the manifest is read, before any
job runs) and the app (its text boxes and its handler). Nothing is sampled here."""

from __future__ import annotations

import json

import numpy as np
import pytest

from textsr import validate
from textsr.errors import UsageError
from textsr.request import ExploreRequest, expand_prompts

try:  # tests/ is not a package: pytest puts it on sys.path ("prepend" import mode)
    from cli_helpers import demo_png, run_cli
except ImportError:  # pragma: no cover
    from tests.cli_helpers import demo_png, run_cli

LIMIT = validate.MAX_PROMPT_CHARS
LR = np.full((8, 8, 3), 0.5, dtype=np.float32)


def test_a_prompt_at_the_limit_is_taken_one_over_is_refused():
    assert expand_prompts(["a" * LIMIT]) == ["a" * LIMIT]
    assert expand_prompts(["  " + "a" * LIMIT + "  "]) == ["a" * LIMIT]  # what counts is the prompt used
    with pytest.raises(UsageError, match=rf"the prompt is {LIMIT + 1:,} characters long, more than the limit of "
                                         rf"{LIMIT:,}"):
        ExploreRequest.build(image=LR, scale=8, prompts="a" * (LIMIT + 1))
    with pytest.raises(UsageError, match=r"prompt 2 is 200,000 characters long.*shorten it"):
        ExploreRequest.build(image=LR, scale=8, prompts=["a red circle", "x" * 200_000])


def test_a_sweep_is_held_to_the_limit_per_prompt_it_makes():
    template = "a {shape} " + "on blue " * (LIMIT // 10)  # 80 % of the limit: fine alone
    assert len(expand_prompts([], template, "circle,star")) == 2
    with pytest.raises(UsageError, match="prompt 2 is"):
        expand_prompts([], template, "circle," + "s" * (LIMIT // 4))
    with pytest.raises(UsageError, match=f"the prompt is {LIMIT + 1:,}"):
        expand_prompts([], "{x}" + "y" * LIMIT, "a")


def test_the_command_line_refuses_a_long_prompt_before_any_work(tmp_path):
    res = run_cli(["upscale", demo_png(tmp_path / "lr.png"), "--scale", 8, "-p", "z" * 5 * LIMIT, "-o", tmp_path / "o"])
    assert res.exit_code == 2 and f"{5 * LIMIT:,} characters long" in res.output
    assert not (tmp_path / "o").exists()
    res = run_cli(["rank", tmp_path / "lr.png", "--scale", 8, "-p", "a", "-p", "z" * (LIMIT + 500)])
    assert res.exit_code == 2 and f"prompt 2 is {LIMIT + 500:,} characters long" in res.output


def test_a_manifest_prompt_is_refused_when_the_manifest_is_read(tmp_path):
    from textsr.batch import load_manifest

    demo_png(tmp_path / "lr.png")
    jobs = [{"image": "lr.png", "scale": 8, "out": "a"},
            {"image": "lr.png", "scale": 8, "out": "b", "prompts": ["y" * 200_000]},
            {"image": "lr.png", "scale": 8, "out": "c", "template": "a {x}", "values": "q" * 2 * LIMIT}]
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(json.dumps(j) for j in jobs))
    with pytest.raises(UsageError, match=r"job 1 \(line 2\).*200,000 characters"):
        load_manifest(path)
    res = run_cli(["batch", path])
    assert res.exit_code == 2 and "200,000 characters" in res.output
    assert not any((tmp_path / o).exists() for o in "abc")


def test_the_app_limits_its_text_boxes_and_refuses_long_prompts():
    gr = pytest.importorskip("gradio", reason="the web app needs gradio")
    from textsr.app import build_app, core

    app = build_app(model_choices=["builtin-shapes"])
    try:
        boxes = {b.elem_id: b for b in app.blocks.values() if isinstance(b, gr.Textbox)}
        limits = app.textsr_handlers.limits
        assert boxes["template"].max_length == LIMIT
        assert boxes["prompts"].max_length == boxes["values"].max_length == limits.max_prompts * (LIMIT + 1)
        preview = core.sweep_preview("w" * (LIMIT + 1), "", "")  # the preview says so while typing
        assert f"{LIMIT + 1:,} characters".replace(",", r"\,") in preview
        with pytest.raises(UsageError, match=f"{LIMIT + 1:,} characters"):  # the text box limit is the browser's only
            core.page_request(LR, "w" * (LIMIT + 1), template=None, values=None, model="builtin-shapes", solver="ddnm+",
                              scale=8)
    finally:
        app.textsr_workdir.close()
