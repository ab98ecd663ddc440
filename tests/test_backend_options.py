"""Backend options: one style (frozen dataclasses validated on construction) for every backend, errors that
name the option and what it takes; the latent backends share one base instead of copies."""

from __future__ import annotations

import dataclasses

import pytest

from textsr.backends.builtin_shapes import ShapesOptions
from textsr.backends.deepfloyd_if import IFOptions
from textsr.backends.kandinsky import KandinskyBackend, KandinskyOptions
from textsr.backends.latent import LatentBackend, LatentOptions
from textsr.backends.latent_base import LatentBackendBase
from textsr.backends.options import choice, flag, fractions, integer, number
from textsr.backends.pixel import PixelOptions
from textsr.backends.unclip import UnCLIPOptions
from textsr.errors import UsageError

SHARED_STYLE = [ShapesOptions, UnCLIPOptions, PixelOptions, LatentOptions, KandinskyOptions]
EVERY = [*SHARED_STYLE, IFOptions]


@pytest.mark.parametrize("cls", EVERY, ids=lambda c: c.__name__)
def test_options_are_frozen_dataclasses_whose_defaults_validate(cls):
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
    o = cls.from_dict({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(o, dataclasses.fields(cls)[0].name, None)


@pytest.mark.parametrize("cls", EVERY, ids=lambda c: c.__name__)
def test_unknown_keys_name_the_known_ones(cls):
    known = [f.name for f in dataclasses.fields(cls)]
    with pytest.raises(UsageError, match=r"unknown .*'bogus'.*known: ") as e:
        cls.from_dict({"bogus": 1})
    assert all(k in str(e.value) for k in known)


@pytest.mark.parametrize("cls", EVERY, ids=lambda c: c.__name__)
def test_every_option_checks_its_value_and_names_itself(cls):
    for f in dataclasses.fields(cls):
        with pytest.raises(UsageError, match=f.name):
            cls.from_dict({f.name: object()})


@pytest.mark.parametrize("cls", SHARED_STYLE, ids=lambda c: c.__name__)
def test_spec_defaults_sit_between_the_class_defaults_and_the_caller(cls):
    f = next(f for f in dataclasses.fields(cls) if f.type in ("float", float))
    assert getattr(cls.from_dict({}, {f.name: 1}), f.name) == 1.0  # normalised to float
    assert getattr(cls.from_dict({f.name: 0.5}, {f.name: 1}), f.name) == 0.5
    with pytest.raises(UsageError, match="model spec defaults"):
        cls.from_dict({}, {"bogus": 1})


def test_values_are_normalised():
    p = PixelOptions.from_dict({"clip_window": [0.9, 0.1], "clip_scale": 1})
    assert p.clip_window == (0.9, 0.1) and p.clip_scale == 1.0 and isinstance(p.clip_scale, float)
    assert UnCLIPOptions.from_dict({"prior_steps": 3.0}).prior_steps == 3


def test_builtin_shapes_refuses_what_it_used_to_read_as_true():
    # bool("no") is True: a string must not switch the cascade on silently
    with pytest.raises(UsageError, match="cascade must be true or false"):
        ShapesOptions.from_dict({"cascade": "no"})
    with pytest.raises(UsageError, match=r"sigma_aug must lie in \[0.0, inf\]"):
        ShapesOptions.from_dict({"sigma_aug": -0.1})


@pytest.mark.parametrize("check,args,match", [
    (number, (float("nan"), "x"), "must be a number"),
    (number, (True, "x"), "must be a number"),
    (number, (2.0, "x", ), None),
    (number, (1.5, "x"), None),
    (integer, (2.5, "n"), "whole number"),
    (integer, (float("inf"), "n"), "whole number"),
    (integer, (1, "n"), None),
    (flag, ("true", "f"), "true or false"),
    (choice, ("z", "c", ("a", "b")), r"one of a, b"),
    (fractions, ([0.5], "w"), "2 fractions"),
    (fractions, ([0.5, 1.5], "w"), r"lie in \[0.0, 1.0\]"),
])
def test_value_checks(check, args, match):
    if match is None:
        check(*args)
    else:
        with pytest.raises(UsageError, match=match):
            check(*args)
    with pytest.raises(UsageError, match=r"must lie in \[0.0, 1.0\], got 2.0"):
        number(2, "x", lo=0.0, hi=1.0)


def test_latent_backends_share_one_base_instead_of_copies():
    for cls in (LatentBackend, KandinskyBackend):
        assert issubclass(cls, LatentBackendBase)
        # the solver handling, the latent operator, sizes and the final projection live in the base only
        for hook in ("build_stages", "check_size", "postprocess", "decode", "multiple", "describe"):
            assert hook not in vars(cls), f"{cls.__name__} overrides {hook}: share it through LatentBackendBase"
