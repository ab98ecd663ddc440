"""A batch job holds its output folder from before its work until its files are written, and "already
done" means a finished textsr run by the record (results.json that textsr wrote), not a file name
(issue 21, defect 1's batch side and defect 4's rule applied to batches)."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from PIL import Image

import textsr.api
from textsr import outdir
from textsr.batch import load_manifest, run_batch
from textsr.batch_jobs import run_job
from textsr.demo import demo_image
from textsr.errors import OutputFolderError

JOB = {"image": "lr.png", "prompts": ["a circle"], "scale": 8, "samples": 1, "steps": 3}


def jobs(tmp_path, *outs):
    Image.fromarray((demo_image() * 255).round().astype(np.uint8)).save(tmp_path / "lr.png")
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(json.dumps({**JOB, "out": o}) for o in outs))
    return load_manifest(path)


def test_a_results_json_that_textsr_did_not_write_is_not_a_finished_job(tmp_path):
    """A user's own results.json in a job's folder: the job is neither skipped as done nor allowed to
    replace the file; it fails with the reason, and the file is kept."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "results.json").write_text('{"my": "numbers"}')
    res = run_batch(jobs(tmp_path, "a", "b"))
    assert [r.status for r in res] == ["failed", "done"]
    assert "holds results.json" in res[0].error and "no textsr record" in res[0].error
    assert (tmp_path / "a" / "results.json").read_text() == '{"my": "numbers"}'


def test_a_finished_run_is_skipped_by_its_record(tmp_path):
    [job] = jobs(tmp_path, "a")
    assert run_job(job).status == "done"
    assert outdir.scan(job.out).finished
    assert run_job(job).status == "skipped"


def test_the_folder_is_held_while_the_job_samples(tmp_path, monkeypatch):
    """Another run that tries the folder while the job samples is refused (it was free between the
    old check and the write)."""
    [job] = jobs(tmp_path, "a")
    real, seen = textsr.api.explore_request, []

    def sampling(req, callback=None):
        def other_run():
            try:
                outdir.check_output_folder(job.out, overwrite=True)
                seen.append("free")
            except OutputFolderError as e:
                seen.append(str(e))

        t = threading.Thread(target=other_run)
        t.start()
        t.join(10)
        return real(req, callback)

    monkeypatch.setattr(textsr.api, "explore_request", sampling)
    assert run_job(job).status == "done"
    assert len(seen) == 1 and "in use by another textsr run" in seen[0]


def test_a_job_another_worker_finished_meanwhile_is_skipped_not_redone(tmp_path, monkeypatch):
    """Two workers on one manifest: the second takes the folder after the first finished the job."""
    [job] = jobs(tmp_path, "a")
    real_reserve = outdir.reserve

    def finished_first(out, **kw):
        monkeypatch.setattr(outdir, "reserve", real_reserve)  # once
        result = textsr.api.explore_request(textsr.api.ExploreRequest.build(
            image=str(tmp_path / "lr.png"), scale=8, samples=1, steps=3, prompts=["a star"]))
        result.save(out)  # the other worker, just before this one takes the folder
        return real_reserve(out, **kw)

    monkeypatch.setattr(outdir, "reserve", finished_first)
    assert run_job(job).status == "skipped"
    doc = json.loads((tmp_path / "a" / "results.json").read_text())
    assert [p["prompt"] for p in doc["prompts"]] == ["a star"]  # the other worker's run, kept


def test_a_job_whose_folder_is_busy_fails_before_any_work(tmp_path, monkeypatch):
    [job] = jobs(tmp_path, "a")
    monkeypatch.setattr(textsr.api, "explore_request", lambda *a, **k: pytest.fail("the job sampled"))
    with outdir.reserve(job.out):
        res = []
        t = threading.Thread(target=lambda: res.append(run_job(job)))
        t.start()
        t.join(10)
    assert res[0].status == "failed" and "in use by another textsr run" in res[0].error
