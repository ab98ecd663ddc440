import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from textsr.batch import load_manifest, run_batch
from textsr.cli import main
from textsr.demo import demo_image
from textsr.errors import UsageError


@pytest.fixture()
def manifest(tmp_path):
    Image.fromarray((demo_image() * 255).round().astype(np.uint8)).save(tmp_path / "lr.png")
    jobs = [{"image": "lr.png", "prompts": ["a circle"], "scale": 8, "samples": 2, "steps": 3, "out": "out/a"},
            {"image": "lr.png", "prompts": ["a star"], "scale": 8, "samples": 2, "steps": 3, "seed": 5, "out": "out/b"},
            {"image": "lr.png", "prompts": ["a circle and a star"], "scale": 8, "samples": 1, "steps": 3,
             "out": "out/c"}]  # fails while it runs: the built-in world has one object per scene
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(json.dumps(j) for j in jobs))
    return path


def test_local_batch_runs_reports_failures_and_resumes(manifest):
    jobs = load_manifest(manifest)
    res = run_batch(jobs)
    assert [r.status for r in res] == ["done", "done", "failed"]
    assert "one object" in res[2].error
    assert (manifest.parent / "out/a/results.json").exists()
    again = run_batch(jobs)
    assert [r.status for r in again[:2]] == ["skipped", "skipped"]


def test_batch_cli_exit_code(manifest):
    res = CliRunner().invoke(main, ["batch", str(manifest)])
    assert res.exit_code == 1 and "2 of 3 jobs" in res.output


def test_every_jobs_inputs_are_checked_before_the_first_runs(tmp_path, monkeypatch):
    """Issue 19 item 4: a missing image in the last job stops the batch before job 0 runs."""
    import textsr.api

    path = _write_jobs(tmp_path, [{**JOB, "out": "a"}, {**JOB, "out": "b"}, {**JOB, "image": "missing.png", "out": "c"},
                                  {**JOB, "model": "no-such-model", "out": "d"}])
    monkeypatch.setattr(textsr.api, "explore_request", lambda *a, **k: pytest.fail("a job ran"))
    with pytest.raises(UsageError, match=r"(?s)2 of 4 jobs cannot run; nothing was run.*job 2 .*no such file.*"
                                         r"job 3 .*unknown model 'no-such-model'"):
        run_batch(load_manifest(path))
    res = CliRunner().invoke(main, ["batch", str(path)])
    assert res.exit_code == 2 and "nothing was run" in res.output
    assert not any((tmp_path / o).exists() for o in "abcd")


def test_a_finished_job_is_not_checked_again(tmp_path):
    """A job that will be skipped (results.json exists) does not need its image any more."""
    path = _write_jobs(tmp_path, [{**JOB, "image": "gone.png", "out": "a"}])
    (tmp_path / "gone.png").write_bytes((tmp_path / "lr.png").read_bytes())
    assert [r.status for r in run_batch(load_manifest(path))] == ["done"]
    (tmp_path / "gone.png").unlink()
    assert [r.status for r in run_batch(load_manifest(path))] == ["skipped"]


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


# ----------------------------------------------------------------------------- issue 10


def _write_jobs(tmp_path, jobs, name="jobs.jsonl"):
    if not (tmp_path / "lr.png").exists():
        Image.fromarray((demo_image() * 255).round().astype(np.uint8)).save(tmp_path / "lr.png")
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(j) for j in jobs))
    return path


JOB = {"image": "lr.png", "prompts": ["a circle"], "scale": 8, "samples": 2, "steps": 3}


@pytest.mark.parametrize("second", ["x/../d3", "{abs}/d3", "./d3", "d3/", "sub/../d3/."])
def test_duplicate_out_folders_are_found_after_resolving_paths(tmp_path, second):  # item 3
    (tmp_path / "x").mkdir()
    (tmp_path / "sub").mkdir()
    path = _write_jobs(tmp_path, [{**JOB, "out": "d3"}, {**JOB, "out": second.replace("{abs}", str(tmp_path))}])
    with pytest.raises(UsageError, match="output folder .*d3 is used by another job"):
        load_manifest(path)


def test_duplicate_out_through_a_symlink(tmp_path):  # item 3
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    path = _write_jobs(tmp_path, [{**JOB, "out": "real/a"}, {**JOB, "out": "link/a"}])
    with pytest.raises(UsageError, match="used by another job"):
        load_manifest(path)


def test_duplicate_out_is_an_error_before_any_job_runs(tmp_path, monkeypatch):  # item 3, through the CLI
    _write_jobs(tmp_path, [{**JOB, "out": "d4"}, {**JOB, "out": str(tmp_path / "d4")}])
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["batch", "jobs.jsonl"])  # a relative manifest path
    assert res.exit_code == 2 and "used by another job" in res.output, res.output
    assert not (tmp_path / "d4").exists()


class Killed(BaseException):
    """Stands for kill -9 between two writes."""


def test_a_job_killed_before_its_last_file_is_rerun(tmp_path, monkeypatch):  # item 7
    from textsr import io

    path = _write_jobs(tmp_path, [{**JOB, "out": "a"}])
    real = io.write_bytes_atomic

    def killed_at_index_html(data, p):
        if str(p).endswith("index.html"):
            raise Killed
        return real(data, p)

    monkeypatch.setattr(io, "write_bytes_atomic", killed_at_index_html)
    with pytest.raises(Killed):
        run_batch(load_manifest(path))
    monkeypatch.setattr(io, "write_bytes_atomic", real)
    assert not (tmp_path / "a" / "results.json").exists()
    res = run_batch(load_manifest(path))
    assert [r.status for r in res] == ["done"], res  # resumed: rerun, not "skipped"
    assert (tmp_path / "a" / "index.html").exists() and (tmp_path / "a" / "results.json").exists()


def test_a_half_finished_job_is_rerun_without_mixing(tmp_path):  # item 4 with resume
    path = _write_jobs(tmp_path, [{**JOB, "out": "a"}])
    stale = tmp_path / "a" / "07-an-old-prompt"
    stale.mkdir(parents=True)
    (stale / "sample-00.png").write_bytes(b"old")
    (tmp_path / "a" / ".textsr-run.json").write_text(  # the record a killed write leaves (textsr.outdir)
        json.dumps({"textsr_version": "0.1.0", "files": ["07-an-old-prompt/sample-00.png", "grid.png"]}))
    (tmp_path / "a" / "mine.txt").write_text("keep")
    (tmp_path / "a" / ".grid.png.abcdefgh.tmp").write_bytes(b"partial")
    assert [r.status for r in run_batch(load_manifest(path))] == ["done"]
    assert not stale.exists() and (tmp_path / "a" / "mine.txt").read_text() == "keep"
    assert not list((tmp_path / "a").glob("*.tmp"))
    assert [r.status for r in run_batch(load_manifest(path))] == ["skipped"]


def test_overwrite_in_the_manifest_reruns_a_finished_job(tmp_path):  # item 4
    path = _write_jobs(tmp_path, [{**JOB, "out": "a"}])
    run_batch(load_manifest(path))
    path = _write_jobs(tmp_path, [{**JOB, "prompts": ["a star"], "out": "a", "overwrite": True}])
    assert [r.status for r in run_batch(load_manifest(path))] == ["done"]
    doc = json.loads((tmp_path / "a" / "results.json").read_text())
    assert [p["prompt"] for p in doc["prompts"]] == ["a star"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir() if p.is_dir()) == ["00-a-star"]


BAD_JOBS = [
    ({"out": None}, "out must be the path"),
    ({"out": 5}, "out must be the path"),
    ({"image": [[0.1]]}, "image must be the path"),
    ({"prompts": [1, 2]}, "prompts must be a string or a list of strings"),
    ({"seed": 9223372036854775807}, "seed must be a whole number from 0 to 4294967295"),
    ({"seed": -1}, "seed must be"),
    ({"sigma_y": 1e308}, "sigma_y must be a number from 0 to 2"),
    ({"sigma_y": "0.1"}, "sigma_y must be a number"),
    ({"batch_size": -1}, "batch_size must be a whole number >= 1"),
    ({"samples": 0}, "samples must be"),
    ({"scale": "eight"}, "scale must be"),
    ({"model_options": [1]}, "model_options must be a dict"),
    ({"solver_options": "eta=1"}, "solver_options must be a dict"),
    ({"operator": "nearest"}, "operator must be one of avgpool, bicubic"),
    ({"preset": "fast"}, "preset must be one of"),
    ({"simulate": "yes"}, "simulate must be true or false"),
    ({"overwrite": 1}, "overwrite must be true or false"),
    ({"model": 7}, "model must be a string"),
    ({"solver": "euler"}, "unknown solver 'euler'; choose one of"),
    ({"particles": 100000}, "particles must be a whole number from 1 to 4096"),
    ({"travel": [5, 100000]}, "travel repeat R must be a whole number from 1 to 20"),
    ({"prompt_prior": [0.5]}, "a prompt prior weighs the prompts' evidence, which only the particle solver"),
    ({"steps": 0}, "steps must be"),
    ({"template": ["a {x}"]}, "template must be a string"),
    ({"values": 3}, "values must be"),
]


@pytest.mark.parametrize("change,msg", BAD_JOBS)
def test_bad_manifest_fields_are_usage_errors_naming_the_job(tmp_path, change, msg):  # items 8, 9
    path = _write_jobs(tmp_path, [{**JOB, "out": "ok"}, {**JOB, "out": "a", **change}])
    with pytest.raises(UsageError, match=f"manifest job 1 \\(line 2\\): {msg}"):
        load_manifest(path)


def test_bad_manifest_cli_exit_2_no_traceback(tmp_path):  # item 8
    path = _write_jobs(tmp_path, [{**JOB, "out": None}])
    res = CliRunner().invoke(main, ["batch", str(path)])
    assert res.exit_code == 2 and "out must be the path" in res.output and "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


@pytest.mark.parametrize("content", [b"\xff\xfe", b"\xff\xfe{\x00}\x00", b"\x00\x01\x02", b'[{"image": "\xe9"}]'])
def test_binary_manifest(tmp_path, content):  # item 8
    p = tmp_path / "m.jsonl"
    p.write_bytes(content)
    with pytest.raises(UsageError, match="not UTF-8 text"):
        load_manifest(p)
    res = CliRunner().invoke(main, ["batch", str(p)])
    assert res.exit_code == 2 and "Traceback" not in res.output and "not UTF-8" in res.output


def test_malformed_jsonl_line_is_reported_at_its_line(tmp_path):  # item 11
    p = tmp_path / "m.jsonl"
    broken = '{"image": "lr.png", broken\n'
    p.write_text(json.dumps({**JOB, "out": "a"}) + "\n" + broken + json.dumps({**JOB, "out": "b"}))
    with pytest.raises(UsageError, match=r"line 2\b"):
        load_manifest(p)
    p.write_text("# a comment\n\n" + json.dumps({**JOB, "out": "a"}) + "\n\n" + "{oops}\n")
    with pytest.raises(UsageError, match=r"line 5\b"):
        load_manifest(p)


def test_models_are_loaded_once_per_batch(tmp_path, monkeypatch):  # item 12
    import textsr.model_registry as reg
    from textsr.model_choice import builtin_world

    builtin_world.cache_clear()  # the built-in world is loaded once per process: start without it

    calls = []
    real = reg.load_model

    def counting(*a, **k):
        calls.append(a[0] if a else k.get("name_or_path"))
        return real(*a, **k)

    monkeypatch.setattr(reg, "load_model", counting)
    path = _write_jobs(tmp_path, [{**JOB, "out": f"o{i}", "seed": i} for i in range(3)])
    res = run_batch(load_manifest(path))
    assert [r.status for r in res] == ["done"] * 3
    assert calls == ["builtin-shapes"]


def test_reused_model_gives_the_same_samples_as_a_fresh_one(tmp_path):  # item 12
    from textsr.api import explore

    path = _write_jobs(tmp_path, [{**JOB, "out": "o0", "seed": 3}, {**JOB, "out": "o1", "seed": 3}])
    run_batch(load_manifest(path))
    fresh = explore(str(tmp_path / "lr.png"), ["a circle"], scale=8, samples=2, steps=3, seed=3)
    for out in ("o0", "o1"):
        got = np.asarray(Image.open(tmp_path / out / "00-a-circle" / "sample-01.png"))
        want = np.rint(fresh.prompts[0].samples[1] * 255).astype(np.uint8)
        assert np.array_equal(got, want)


def test_local_batch_reports_one_model_load_for_all_jobs(tmp_path):  # item 12
    path = _write_jobs(tmp_path, [{**JOB, "out": f"o{i}", "seed": i} for i in range(3)])
    res = run_batch(load_manifest(path))
    assert [r.model_loads for r in res] == [1, 1, 1] and len({r.worker for r in res}) == 1


def test_ray_workers_keep_their_model(tmp_path):  # item 12, with Ray when it is installed
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'textsr[cluster]')")
    path = _write_jobs(tmp_path, [{**JOB, "out": f"o{i}", "seed": i} for i in range(4)])
    res = run_batch(load_manifest(path), use_ray=True, workers=2, ray_init={"num_cpus": 2})
    assert [r.status for r in res] == ["done"] * 4, res
    assert len({r.worker for r in res}) == 2  # two long-lived workers ...
    by_worker = {}
    for r in res:
        by_worker.setdefault(r.worker, []).append(r.model_loads)
    assert all(loads == [1] * len(loads) for loads in by_worker.values()), by_worker  # ... each loaded it once
    assert all((tmp_path / f"o{i}" / "results.json").exists() for i in range(4))
