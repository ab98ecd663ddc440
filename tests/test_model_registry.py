"""Model registry and loading: names, specs, folders, the Hugging Face cache and offline errors."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from textsr import hub
from textsr import model_registry as models
from textsr.errors import ModelNotFoundError, UsageError
from textsr.model_registry import MODELS, SPECS, load_model, model_table, resolve_spec

IF_REPOS = ("DeepFloyd/IF-I-XL-v1.0", "DeepFloyd/IF-II-L-v1.0")


@pytest.fixture(scope="module")
def tiny_if(tmp_path_factory):
    from textsr.testing.tiny_deepfloyd_if import build_tiny_if

    pytest.importorskip("torch")
    return build_tiny_if(tmp_path_factory.mktemp("tiny_if"))


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def put_in_cache(cache: Path, repo_id: str, folder: Path, revision: str = "c" * 40) -> Path:
    """Lay ``folder`` out as the Hub cache does: models--owner--name/{refs/main, snapshots/<rev>/...}."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / revision
    shutil.copytree(folder, snap)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snap


def test_registry_is_consistent():
    assert list(MODELS) == list(SPECS)
    for name, info in MODELS.items():
        assert info.name == name and info.backend in models.BACKENDS
        assert SPECS[name]["backend"] == info.backend
        assert tuple(models.stage_hub_ids(SPECS[name]["stages"])) == info.hub_ids
    for name in ("builtin-shapes", "deepfloyd-if", "karlo", "ddpm-celebahq", "ddpm-church", "ddpm-bedroom",
                 "stable-diffusion"):
        assert name in MODELS
    assert MODELS["deepfloyd-if"].hub_ids == IF_REPOS
    all_if = {h for n in MODELS if n.startswith("deepfloyd-if") for h in MODELS[n].hub_ids}
    assert all_if == {f"DeepFloyd/IF-I-{s}-v1.0" for s in ("XL", "L", "M")} | {
        f"DeepFloyd/IF-II-{s}-v1.0" for s in ("L", "M")}
    assert "licen" in MODELS["deepfloyd-if"].license.lower() and "HF_TOKEN" in MODELS["deepfloyd-if"].license


def test_unknown_model_lists_the_known_names():
    with pytest.raises(ModelNotFoundError) as e:
        load_model("deepfloid-if")
    for name in MODELS:
        assert name in str(e.value)


def test_importing_the_registry_does_not_import_torch():
    code = ("import sys, textsr.model_registry as m; m.model_table(); "
            "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_model_table_offline_from_the_cache_only(empty_cache, monkeypatch, tmp_path):
    monkeypatch.setattr(hub, "network_available", lambda *a, **k: pytest.fail("model_table must not use the network"))
    rows = {r["name"]: r for r in model_table()}
    assert list(rows) == list(MODELS)
    assert rows["builtin-shapes"]["cached"] == "builtin"
    assert rows["deepfloyd-if"]["cached"] is False and rows["deepfloyd-if"]["missing"] == list(IF_REPOS)
    assert rows["deepfloyd-if"]["vram_gb"] and rows["deepfloyd-if"]["hub_ids"] == list(IF_REPOS)
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "model_index.json").write_text("{}")
    for r in IF_REPOS:
        put_in_cache(empty_cache, r, tmp_path / "f")
    rows = {r["name"]: r for r in model_table()}
    assert rows["deepfloyd-if"]["cached"] is True and rows["deepfloyd-if-m"]["cached"] is False
    json.dumps(list(rows.values()))  # `textsr models --json`


def test_missing_weights_offline_fail_before_any_work(empty_cache, monkeypatch):
    monkeypatch.setattr(models, "_loader", lambda backend: pytest.fail("must fail before loading the backend"))
    with pytest.raises(ModelNotFoundError) as e:
        load_model("deepfloyd-if", offline=True)
    msg = str(e.value)
    for text in ("hf download DeepFloyd/IF-I-XL-v1.0", "hf download DeepFloyd/IF-II-L-v1.0", "licence", "HF_TOKEN",
                 "offline", str(empty_cache)):
        assert text in msg
    assert '"unet/*fp16*"' in msg  # only the files textsr loads
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline=None reads the environment
    with pytest.raises(ModelNotFoundError, match="offline"):
        load_model("ddpm-celebahq")


def test_missing_weights_without_network_fail_before_any_work(empty_cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "network_available", lambda *a, **k: False)
    monkeypatch.setattr(models, "_loader", lambda backend: pytest.fail("must fail before loading the backend"))
    with pytest.raises(ModelNotFoundError, match=r"(?s)cannot be reached.*hf download kakaobrain/karlo-v1-alpha"):
        load_model("karlo", offline=False)


def test_if_loads_by_hub_id_from_the_cache(tiny_if, empty_cache):
    """The real Hub-id path: from_pretrained(<id>, local_files_only=True) over a cache holding the tiny IF."""
    root = tiny_if.parent
    put_in_cache(empty_cache, IF_REPOS[0], root / "stage_1")
    put_in_cache(empty_cache, IF_REPOS[1], root / "stage_2")
    be = load_model("deepfloyd-if", offline=True, device="cpu")
    assert be.info is MODELS["deepfloyd-if"] and be.describe()["stages"]["stage_1"] == IF_REPOS[0]
    assert len(be.build_stages("ddnm", {}, {})) == 2
    # a cache entry without the UNet weights is incomplete: the error names the part
    shutil.rmtree(empty_cache / ("models--" + IF_REPOS[1].replace("/", "--")))
    snap = put_in_cache(empty_cache, IF_REPOS[1], root / "stage_2")
    for f in (snap / "unet").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ModelNotFoundError, match=r"IF-II-L-v1.0 \(cached without unet \(weights\)\)"):
        load_model("deepfloyd-if", offline=True, device="cpu")


def test_spec_files_resolve_relative_paths_and_overrides(tiny_if, tmp_path):
    spec = resolve_spec(tiny_if)
    assert spec["backend"] == "deepfloyd-if" and spec["name"] == "tiny-if"
    assert all(Path(p).is_absolute() and Path(p).is_dir() for p in spec["stages"].values())
    assert spec["info"].hub_ids == () and spec["origin"] == str(tiny_if.resolve())
    shutil.copytree(tiny_if.parent / "stage_1", tmp_path / "models" / "tiny" / "stage_1")
    (tmp_path / "specs").mkdir()
    moved = tmp_path / "specs" / "elsewhere.json"
    moved.write_text(json.dumps({"backend": "deepfloyd-if", "stages": {"stage_1": "../models/tiny/stage_1"},
                                 "defaults": {"guidance_scale": 3}}))
    spec2 = resolve_spec(moved, load={"cpu_offload": True}, defaults={"noise_level": 100})
    assert spec2["stages"]["stage_1"] == str((tmp_path / "models" / "tiny" / "stage_1").resolve())
    assert spec2["load"] == {"cpu_offload": True}
    assert spec2["defaults"] == {"guidance_scale": 3, "noise_level": 100}
    reg = resolve_spec("deepfloyd-if", stages={"stage_1": "DeepFloyd/IF-I-M-v1.0"})
    assert reg["stages"] == {"stage_1": "DeepFloyd/IF-I-M-v1.0", "stage_2": "DeepFloyd/IF-II-L-v1.0"}
    assert SPECS["deepfloyd-if"]["stages"]["stage_1"] == "DeepFloyd/IF-I-XL-v1.0"  # registry untouched
    nested = resolve_spec("ddpm-celebahq", stages={"unet": {"id": "google/ddpm-ema-celebahq-256", "subfolder": "x"}})
    assert nested["stages"]["unet"] == {"id": "google/ddpm-ema-celebahq-256", "subfolder": "x"}


@pytest.mark.parametrize("spec,overrides,error,match", [
    ({"backend": "nope", "stages": {}}, {}, UsageError, "backend must be one of"),
    ({"backend": "deepfloyd-if", "stages": {}, "extra": 1}, {}, UsageError, "unknown key"),
    ({"backend": "deepfloyd-if", "stages": {"stage_1": "./missing"}}, {}, ModelNotFoundError, "neither an existing"),
    ({"backend": "deepfloyd-if", "stages": {"stage_1": 3}}, {}, UsageError, "Hub id or a folder"),
    ({"backend": "deepfloyd-if", "stages": {}}, {"device_map": "x"}, UsageError, "unknown load_model option"),
    ({"backend": "deepfloyd-if", "stages": {}}, {"load": 1}, UsageError, "must be a dict"),
])
def test_bad_specs_say_what_is_wrong(tmp_path, spec, overrides, error, match):
    p = tmp_path / "spec.json"
    p.write_text(json.dumps(spec))
    with pytest.raises(error, match=match):
        resolve_spec(p, **overrides)


def test_folders_are_recognised_by_their_pipeline_class(tmp_path):
    (tmp_path / "sr").mkdir()
    (tmp_path / "sr" / "model_index.json").write_text(json.dumps({"_class_name": "IFSuperResolutionPipeline"}))
    with pytest.raises(UsageError, match="stage_1 and stage_2"):
        resolve_spec(tmp_path / "sr")
    (tmp_path / "ddpm").mkdir()
    (tmp_path / "ddpm" / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    assert resolve_spec(tmp_path / "ddpm")["backend"] == "pixel"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="textsr_model.json"):
        resolve_spec(tmp_path / "empty")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UsageError, match="cannot read model spec"):
        resolve_spec(tmp_path / "bad.json")


def test_if_spec_errors(tiny_if, tmp_path):
    with pytest.raises(UsageError, match="stage_1"):
        load_model(tiny_if, offline=True, stages={"stage_3": str(tiny_if.parent / "stage_2")})
    (tmp_path / "half").mkdir()
    shutil.copytree(tiny_if.parent / "stage_1", tmp_path / "half" / "stage_1")
    shutil.rmtree(tmp_path / "half" / "stage_1" / "text_encoder")
    (tmp_path / "half" / "textsr_model.json").write_text(json.dumps(
        {"backend": "deepfloyd-if", "stages": {"stage_1": "stage_1"}}))
    with pytest.raises(UsageError, match="text_encoder"):
        load_model(tmp_path / "half", offline=True)


def test_builtin_shapes_loads_through_the_registry():
    pytest.importorskip("textsr.backends.builtin_shapes")
    be = load_model("builtin-shapes", device="cpu")
    assert hasattr(be, "build_stages")


def test_hub_helpers(tmp_path, monkeypatch):
    assert hub.is_hub_id("DeepFloyd/IF-I-XL-v1.0") and not hub.is_hub_id("no-slash")
    assert not hub.is_hub_id(str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    assert hub.resolve_offline(None) is False and hub.resolve_offline(True) is True
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.resolve_offline(None) is True
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text("{}")
    assert hub.missing_parts(tmp_path, ("unet", "scheduler")) == ["unet (weights)", "scheduler"]
    (tmp_path / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"")
    assert hub.missing_parts(tmp_path, ("unet",)) == [] and hub.has_variant_files(tmp_path, "fp16")
    assert hub.choose_variant(str(tmp_path), "fp16") == "fp16"
    (tmp_path / "unet" / "diffusion_pytorch_model.fp16.safetensors").rename(
        tmp_path / "unet" / "diffusion_pytorch_model.safetensors")
    assert hub.choose_variant(str(tmp_path), "fp16") is None
    assert hub.choose_variant("someone/not-cached-yet", "fp16") == "fp16"  # a download fetches the variant


def test_hub_errors_become_model_not_found_with_the_fix(empty_cache, monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    src = [models.hub_source("DeepFloyd/IF-I-XL-v1.0")]
    with pytest.raises(ModelNotFoundError, match=r"(?s)refused access.*accept its licence.*HF_TOKEN"):
        with hub.hub_errors(src, "model 'x'"):
            raise OSError("You are trying to access a gated repo. 401 Client Error")
    with pytest.raises(ModelNotFoundError, match="a file is missing"):
        with hub.hub_errors(src, "model 'x'"):
            raise LocalEntryNotFoundError("nope")
    with pytest.raises(OSError, match="disk full"):  # other errors pass through unchanged
        with hub.hub_errors(src, "model 'x'"):
            raise OSError("disk full")
    monkeypatch.setattr(hub, "network_available", lambda *a, **k: True)
    hub.ensure_available(src, offline=False)  # online: from_pretrained will download
