"""Issue 10 items 5 and 9 in the API: every argument is checked in explore's first phase, before any
model loads; bad values raise UsageError saying what to pass; tensors are accepted CHW and HWC."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import textsr.model_registry
from textsr.api import explore
from textsr.demo import demo_image
from textsr.errors import UsageError

LR = demo_image()  # (8, 8, 3) in [0, 1]
FAST = dict(scale=8, samples=1, steps=2, model="builtin-shapes")  # named: random and grey images are not scenes


@pytest.fixture()
def no_model_load(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(textsr.model_registry, "load_model", refuse)


@pytest.mark.parametrize("kw,msg", [
    (dict(seed=-1), "seed must be a whole number from 0 to 4294967295, got -1"),
    (dict(seed=2**63 - 1), "seed must be a whole number from 0 to 4294967295"),
    (dict(seed="abc"), "seed must be a whole number .* got 'abc' \\(str\\)"),
    (dict(seed=1.5), "seed must be a whole number"),
    (dict(sigma_y="0.1"), "sigma_y must be a number from 0 to 2 .* got '0.1' \\(str\\)"),
    (dict(sigma_y=None), "sigma_y must be a number .* got None"),
    (dict(sigma_y=float("nan")), "sigma_y must be a number"),
    (dict(sigma_y=1e308), "sigma_y must be a number from 0 to 2"),
    (dict(batch_size=0.5), "batch_size must be a whole number >= 1, got 0.5"),
    (dict(batch_size=-1), "batch_size must be a whole number >= 1"),
    (dict(model_options=[1]), "model_options must be a dict"),
    (dict(solver_options="eta=1"), "solver_options must be a dict"),
    (dict(prompts=[1, 2]), "prompts must be a string or a list of strings"),
    (dict(prompts=b"a red circle"), "prompts must be a string or a list of strings"),
    (dict(template=5, values="a,b"), "template must be a string"),
    (dict(values=3, template="a {x}"), "values must be"),
    (dict(samples="4"), "samples must be a whole number from 1 to 256"),
    (dict(scale="8"), "scale must be a whole number from 2 to 32"),
    (dict(steps=0), "steps must be a whole number >= 1"),
    (dict(simulate="yes"), "simulate must be true or false"),
    (dict(operator=5), "operator must be one of"),
    (dict(preset=3), "preset must be one of paper; got 3"),
    (dict(model=5), "model must be a registry name"),
    (dict(solver=5), "solver name must be a string"),
    (dict(device=3), "device must be a string"),
    (dict(image=np.zeros((0, 0, 3), np.float32)), "the image is empty"),
    (dict(image=np.zeros((8, 8, 4), np.float32)), "must be \\(H, W\\), \\(H, W, C\\) or \\(C, H, W\\)"),
    (dict(image=torch.rand(3, 8, 8) * 2 - 1), "finite values in \\[0, 1\\]"),
    (dict(image=np.full((8, 8, 3), 7, np.int64)), "uint8"),
    (dict(image=None), "image must be a path, a PIL image, a numpy array or a torch tensor"),
    (dict(image="/no/such/file.png"), "no such file"),
])
def test_bad_arguments_are_refused_before_the_model_loads(no_model_load, kw, msg):
    args = {"image": LR, "prompts": ["a red circle"], **FAST, **kw}
    with pytest.raises(UsageError, match=msg):
        explore(args.pop("image"), args.pop("prompts"), **args)


@pytest.mark.parametrize("layout", ["chw", "hwc", "chw-batch", "hw"])
def test_tensors_chw_and_hwc_give_the_same_result(layout):
    t = torch.from_numpy(LR)  # (8, 8, 3)
    image = {"chw": t.permute(2, 0, 1), "hwc": t, "chw-batch": t.permute(2, 0, 1)[None],
             "hw": t.mean(-1)}[layout]
    ref = explore(LR if layout != "hw" else LR.mean(-1), ["a red circle"], **FAST)
    got = explore(image, ["a red circle"], **FAST)
    assert got.lr.shape == ref.lr.shape
    np.testing.assert_allclose(got.prompts[0].samples, ref.prompts[0].samples, atol=1e-6)


def test_the_issue_case_runs():
    r = explore(torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0)), ["a red circle"], **FAST)
    assert r.prompts[0].samples.shape == (1, 64, 64, 3)


def test_ambiguous_shapes_follow_the_documented_rule():
    from textsr.validate import image_array

    cube = np.arange(27, dtype=np.float32).reshape(3, 3, 3) / 26
    np.testing.assert_array_equal(image_array(cube), cube)  # numpy: (H, W, C)
    np.testing.assert_array_equal(image_array(torch.from_numpy(cube)), cube.transpose(1, 2, 0))  # torch: (C, H, W)
    np.testing.assert_array_equal(image_array(cube[:, :, :1].copy()), cube[:, :, :1])  # (3, 3, 1): HWC
    np.testing.assert_array_equal(image_array(torch.from_numpy(cube[:1].copy())), cube[:1].transpose(1, 2, 0))
    assert image_array(np.zeros((3, 5, 7), np.float32)).shape == (5, 7, 3)  # only the first fits: CHW
    assert image_array(torch.zeros(5, 7, 3)).shape == (5, 7, 3)  # only the last fits: HWC
    assert image_array(np.zeros((4, 4), np.uint8)).shape == (4, 4, 1)
    assert image_array([[0.0, 1.0], [0.5, 0.25]]).shape == (2, 2, 1)
