"""textsr.report and the results schema: all files written, results.json valid, HTML escaped,
grid geometry, colormap, and failures that leave the folder alone."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from textsr import report
from textsr.errors import UsageError
from textsr.schema import load_schema, schema_errors, validate_results

EVIL = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned=2"> & "q"'
COLORS = [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)]


def make_run(prompts=("a red circle", EVIL), n=3, h=8, w=6, scale=8, channels=3, seed=0):
    """Synthetic (lr, samples, std_maps, results): sample k of every prompt is constant COLORS[k]."""
    rng = np.random.default_rng(seed)
    lr = rng.random((h, w, channels)).astype(np.float32)
    H, W = h * scale, w * scale
    samples = {p: [np.broadcast_to(np.array(COLORS[k % 3], np.float32)[:channels], (H, W, channels)).copy()
                   for k in range(n)] for p in prompts}
    std_maps = {p: np.stack(s).std(0).mean(-1) for p, s in samples.items()}
    results = {
        "textsr_version": "0.1.0",
        "created": "2025-01-31T12:00:00+00:00",
        "input": {"path": "in.png", "width": w, "height": h, "channels": channels, "notes": ["loaded"]},
        "scale": scale,
        "output_size": [H, W],
        "model": {"name": "shapes-tiny", "backend": "shapes", "device": "cpu"},
        "solver": {"solver": "ddnm", "steps": 10, "eta": 0.85},
        "sigma_y": 0.0,
        "seed": 1234,
        "device": "cpu",
        "dtype": "float32",
        "library_versions": {"python": "3.11.2", "torch": "2.13.0", "numpy": np.__version__},
        "timings": {"total_s": 1.5, "per_prompt_s": [0.7, 0.8]},
        "prompts": [
            {"prompt": p, "label": p, "tags": ["shape"],
             "diversity": {"pairwise_l2": np.float32(0.5), "mean_std": 0.2}, "text_consistency": None,
             "samples": [{"index": k, "seed": 1234 + k, "lr_psnr": 30.0 + k, "text_score": 0.25 + k / 100}
                         for k in range(n)]}
            for p in prompts
        ],
    }
    return lr, samples, std_maps, results


def write(out, run=None, **kw):
    lr, samples, std_maps, results = run or make_run()
    return report.write_outputs(out, lr=lr, samples=samples, std_maps=std_maps, results=results,
                                scale=results["scale"], notes=kw.pop("notes", ["run note"]), **kw)


def test_writes_every_file(tmp_path):
    paths = write(tmp_path)
    expected = {"input.png", "nearest.png", "bicubic.png", "grid.png", "results.json", "index.html"}
    want = ["00-a-red-circle", "01-script-window-pwned-1-script-img-src-x-o"]
    assert report.folder_names(["a red circle", EVIL]) == want
    for folder in report.folder_names(["a red circle", EVIL]):
        expected |= {f"{folder}/sample-{k:02d}.png" for k in range(3)} | {f"{folder}/std.png"}
    assert set(paths) == expected
    for rel, p in paths.items():
        assert p == (tmp_path / rel).resolve() and p.is_file() and p.stat().st_size > 0
    assert not list(tmp_path.rglob("*.tmp"))
    assert Image.open(paths["input.png"]).size == (6, 8)
    assert Image.open(paths["nearest.png"]).size == Image.open(paths["bicubic.png"]).size == (48, 64)
    s0 = np.asarray(Image.open(paths["00-a-red-circle/sample-01.png"]))
    assert s0.shape == (64, 48, 3) and tuple(s0[0, 0]) == (0, 255, 0)


def test_results_json_validates_and_maps_folders(tmp_path):
    lr, samples, std_maps, results = run = make_run()
    original = copy.deepcopy(results)
    paths = write(tmp_path, run)
    doc = json.loads(paths["results.json"].read_text("utf-8"))
    validate_results(doc)
    assert results == original  # the caller's dict is not modified
    p0 = doc["prompts"][0]
    assert p0["folder"] == "00-a-red-circle" and p0["std_file"] == "00-a-red-circle/std.png"
    assert [s["file"] for s in p0["samples"]] == [f"00-a-red-circle/sample-0{k}.png" for k in range(3)]
    assert doc["prompts"][1]["prompt"] == EVIL
    assert doc["files"]["grid"] == "grid.png" and doc["std_map"]["colormap"] == "viridis"
    assert "run note" in doc["notes"] and any("std maps" in n for n in doc["notes"])
    assert doc["prompts"][0]["diversity"]["pairwise_l2"] == 0.5  # numpy scalar -> plain float
    for entry in doc["prompts"]:
        for s in entry["samples"]:
            assert (tmp_path / s["file"]).is_file()


def test_non_finite_metrics_become_null_with_a_note(tmp_path):
    lr, samples, std_maps, results = run = make_run()
    results["prompts"][0]["samples"][1]["lr_psnr"] = float("inf")
    results["prompts"][1]["text_consistency"] = float("nan")
    doc = json.loads(write(tmp_path, run)["results.json"].read_text())
    assert doc["prompts"][0]["samples"][1]["lr_psnr"] is None
    assert doc["prompts"][1]["text_consistency"] is None
    assert any("prompts/0/samples/1/lr_psnr was inf" in n for n in doc["notes"])
    assert "LR-PSNR &gt;=100 dB" in (tmp_path / "index.html").read_text()  # inf: A x = y exactly


def test_index_html_escapes_prompts_and_shows_metrics(tmp_path):
    html = write(tmp_path)["index.html"].read_text("utf-8")
    assert "<script" not in html.lower() and "onerror=" not in html.replace("onerror=&quot;", "")
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in html
    assert "&amp; &quot;q&quot;" in html
    assert "LR-PSNR 31.0 dB" in html and "text 0.26" in html and "seed 1235" in html
    for ref in ['src="input.png"', 'src="bicubic.png"', 'src="00-a-red-circle/std.png"', 'href="results.json"']:
        assert ref in html
    assert "http://" not in html and "https://" not in html and "<link" not in html  # fully offline
    assert "solver.steps" in html and "shapes-tiny" in html


def test_reference_metrics_per_sample_in_captions(tmp_path):
    lr, samples, std_maps, results = run = make_run()
    results["reference"] = {"psnr": [[20.0, 21.0, 22.0], [23.0, 24.0, 25.0]], "ssim": [[0.5] * 3, [0.6] * 3]}
    html = write(tmp_path, run)["index.html"].read_text()
    assert "ref PSNR 24" in html and "ref SSIM 0.6" in html


def test_grid_geometry_and_cells(tmp_path):
    paths = write(tmp_path)
    grid = Image.open(paths["grid.png"])
    lay = report.GridLayout.for_images(rows=2, n_samples=3, h=64, w=48)
    assert (lay.cell_h, lay.cell_w) == (192, 144) and lay.cols == 6  # 64 px side -> x3 -> 192 >= MIN_CELL
    assert grid.size == lay.size
    a = np.asarray(grid)
    for r in range(2):
        for k, color in enumerate(COLORS):
            x, y = lay.origin(r, 2 + k)
            assert tuple(a[y + lay.cell_h // 2, x + lay.cell_w // 2]) == tuple(int(c * 255) for c in color)
        x, y = lay.origin(r, 5)  # std column: viridis colours
        assert tuple(a[y + 5, x + 5]) in {tuple(c) for c in report.VIRIDIS.tolist()}
    assert (a[:, : report.LABEL_W] < 100).any()  # prompt text drawn in the label column
    assert (a[: report.HEADER_H, report.LABEL_W :] < 100).any()  # column headers drawn


@pytest.mark.parametrize("h, w, cell", [(64, 64, (192, 192)), (16, 8, (192, 96)), (200, 300, (200, 300)),
                                        (1000, 500, (384, 192))])
def test_grid_cell_sizes(h, w, cell):
    lay = report.GridLayout.for_images(rows=1, n_samples=2, h=h, w=w)
    assert (lay.cell_h, lay.cell_w) == cell


def test_grid_handles_uneven_sample_counts_and_gray_input(tmp_path):
    lr, samples, std_maps, results = run = make_run(prompts=("one", "two"), channels=1)
    samples["one"] = samples["one"][:1]
    results["prompts"][0]["samples"] = results["prompts"][0]["samples"][:1]
    paths = write(tmp_path, run)
    assert Image.open(paths["grid.png"]).size == report.GridLayout.for_images(2, 3, 64, 48).size
    assert Image.open(paths["00-one/sample-00.png"]).mode == "L"


def test_wrap_truncates_long_prompts():
    from PIL import ImageDraw

    draw = ImageDraw.Draw(Image.new("RGB", (10, 10)))
    font = report._font(report.FONT_SIZE)
    lines = report._wrap(draw, "word " * 200 + "x" * 300, font, 200, 4)
    assert len(lines) == 4 and lines[-1].endswith("...")
    assert all(draw.textlength(line, font=font) <= 200 + 1 for line in lines)


def test_existing_folder_only_our_files_overwritten(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    (tmp_path / "grid.png").write_bytes(b"my grid")
    for overwrite in (False, True):  # grid.png: textsr's name, but no textsr record lists it: never replaced
        with pytest.raises(UsageError, match="no textsr record"):
            write(tmp_path, overwrite=overwrite)
    assert (tmp_path / "grid.png").read_bytes() == b"my grid"
    (tmp_path / "grid.png").unlink()
    write(tmp_path)
    write(tmp_path, overwrite=True)  # textsr's own run: replaced
    assert (tmp_path / "keep.txt").read_text() == "mine"
    assert Image.open(tmp_path / "grid.png").format == "PNG"


def test_invalid_results_write_nothing(tmp_path):
    lr, samples, std_maps, results = run = make_run()
    del results["seed"]
    results["prompts"][0]["samples"][0]["text_score"] = "high"
    with pytest.raises(ValueError) as e:
        write(tmp_path / "out", run)
    msg = str(e.value)
    assert "'seed' is a required property" in msg and "prompts/0/samples/0/text_score" in msg
    assert not (tmp_path / "out").exists()  # validated before the folder is even created


@pytest.mark.parametrize("break_it, match", [
    (lambda r, s: s.pop("a red circle"), "do not match the prompt labels"),
    (lambda r, s: s["a red circle"].pop(), "2 sample images but 3 entries"),
    (lambda r, s: s["a red circle"].__setitem__(0, np.zeros((10, 10, 3))), "expected size"),
    (lambda r, s: r["prompts"][1].__setitem__("label", "a red circle"), "unique"),
    (lambda r, s: r.__setitem__("output_size", [65, 48]), "output size"),
])
def test_inconsistent_inputs_are_programming_errors(tmp_path, break_it, match):
    lr, samples, std_maps, results = run = make_run()
    break_it(results, samples)
    with pytest.raises(ValueError, match=match):
        write(tmp_path, run)


def test_missing_std_map_is_computed(tmp_path):
    lr, samples, std_maps, results = run = make_run()
    std_maps.clear()
    paths = write(tmp_path, run)
    std = np.asarray(Image.open(paths["00-a-red-circle/std.png"]))
    assert std.shape == (64, 48, 3) and tuple(std[0, 0]) == tuple(report.VIRIDIS[-1])


def test_out_dir_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        write(f)


def test_slugify_and_folder_names():
    assert report.slugify("A Red  Circle!") == "a-red-circle"
    assert report.slugify("Crème brûlée") == "creme-brulee"
    assert report.slugify("") == report.slugify("漢字") == "no-text"
    assert report.slugify("../../etc/passwd") == "etc-passwd"
    assert len(report.slugify("x" * 500)) == 40
    assert report.folder_names(["same", "same"]) == ["00-same", "01-same"]
    assert report.folder_names(["p"] * 101)[100] == "100-p"


def test_colorize_endpoints():
    v = np.array([[0.0, 0.5, 1.0, 2.0]])
    c = report.colorize(v, vmin=0.0, vmax=1.0)
    assert c.shape == (1, 4, 3) and c.dtype == np.uint8
    assert tuple(c[0, 0]) == (68, 1, 84) and tuple(c[0, 2]) == tuple(c[0, 3]) == (253, 231, 37)
    lum = report.VIRIDIS.astype(float) @ [0.299, 0.587, 0.114]
    assert np.all(np.diff(lum) > -1) and lum[-1] - lum[0] > 150  # brightness rises (within rounding)


# ------------------------------------------------------------------------------------------
# Schema
# ------------------------------------------------------------------------------------------


def _valid_doc():
    doc = json.loads(json.dumps(make_run()[3], default=float))
    for i, entry in enumerate(doc["prompts"]):
        entry["folder"] = f"0{i}-p"
        for k, s in enumerate(entry["samples"]):
            s["file"] = f"0{i}-p/sample-0{k}.png"
    return doc


def test_schema_is_valid_draft_2020_12():
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(load_schema())
    assert load_schema()["$schema"].endswith("2020-12/schema")


def test_schema_accepts_backend_extras_and_optional_blocks():
    doc = _valid_doc()
    doc["model"]["guidance_scale"] = 7.5
    doc["solver"]["per_stage"] = [{"stage": "64px", "steps": 50}]
    doc["prompts"][0]["exact"] = {"sw": 0.1}
    doc["prompts"][0]["tags"] = {"shape": "circle"}
    doc["reference"] = {"psnr": [[20.0, None]], "ssim": 0.5}
    doc["exact"] = {"sw": 0.02}
    doc["input"]["path"] = None
    doc["anything_new"] = {"x": 1}
    assert schema_errors(doc) == []


@pytest.mark.parametrize("path, value, expect", [
    (("scale",), 33, "scale"),
    (("scale",), 4.5, "scale"),
    (("created",), "yesterday", "created"),
    (("output_size",), [64], "output_size"),
    (("input", "channels"), 4, "input/channels"),
    (("model",), {"name": "x"}, "'backend' is a required property"),
    (("prompts",), [], "prompts"),
    (("prompts", 0, "samples", 0, "file"), "/etc/passwd", "prompts/0/samples/0/file"),
    (("prompts", 0, "folder"), "../up", "prompts/0/folder"),
    (("prompts", 0, "diversity"), {"pairwise_l2": 1.0}, "mean_std"),
    (("timings",), {"per_prompt_s": [1.0]}, "total_s"),
])
def test_schema_rejects(path, value, expect):
    doc = _valid_doc()
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ValueError, match="results do not match") as e:
        validate_results(doc)
    assert expect in str(e.value)


def test_schema_file_ships_inside_the_package():
    assert (Path(report.__file__).parent / "schema" / "results.schema.json").is_file()
