import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from textsr.cli import main
from textsr.demo import demo_image
from textsr.batch import load_manifest, run_batch
from textsr.errors import UsageError


@pytest.fixture()
def manifest(tmp_path):
    Image.fromarray((demo_image() * 255).round().astype(np.uint8)).save(tmp_path / "lr.png")
    jobs = [{"image": "lr.png", "prompts": ["a circle"], "scale": 8, "samples": 2, "steps": 3, "out": "out/a"},
            {"image": "lr.png", "prompts": ["a star"], "scale": 8, "samples": 2, "steps": 3, "seed": 5, "out": "out/b"},
            {"image": "missing.png", "scale": 8, "out": "out/c"}]
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(json.dumps(j) for j in jobs))
    return path


def test_local_batch_runs_reports_failures_and_resumes(manifest):
    jobs = load_manifest(manifest)
    res = run_batch(jobs)
    assert [r.status for r in res] == ["done", "done", "failed"]
    assert "no such file" in res[2].error
    assert (manifest.parent / "out/a/results.json").exists()
    again = run_batch(jobs)
    assert [r.status for r in again[:2]] == ["skipped", "skipped"]


def test_batch_cli_exit_code(manifest):
    res = CliRunner().invoke(main, ["batch", str(manifest)])
    assert res.exit_code == 1 and "2 of 3 jobs" in res.output


@pytest.mark.parametrize("content,msg", [("[1]", "expected an object"), ('[{"image": "x"}]', "missing required"),
                                         ('[{"image": "x", "scale": 4, "out": "o", "bogus": 1}]', "unknown field"),
                                         ("{not json", "not valid JSON"), ("[]", "no jobs")])
def test_manifest_errors(tmp_path, content, msg):
    p = tmp_path / "m.json"
    p.write_text(content)
    with pytest.raises(UsageError, match=msg):
        load_manifest(p)


@pytest.mark.slow
def test_ray_batch(manifest):
    pytest.importorskip("ray")
    jobs = load_manifest(manifest)[:2]
    res = run_batch(jobs, use_ray=True, force=True, ray_init={"num_cpus": 2})
    assert [r.status for r in res] == ["done", "done"]
