"""What a flow family plugs into ``flow_base`` and how guidance acts on its velocity: the options of each guidance
kind (``OPTIONS``: none, distilled, cfg), the prompt's text states (``FlowText``), the transformer call and text
stack a family supplies (``FlowNet``, ``TextEncoders``) and ``GuidedVelocity`` (classifier-free guidance on the
velocity, both branches in one batch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch

from ..errors import UsageError
from .options import BackendOptions, number, text

GUIDANCE_KEYS = ("guidance_scale", "negative_prompt", "true_cfg_scale", "guidance")


# ------------------------------------------------------------------------------------------------
# options: one class per guidance kind
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NoGuidanceOptions(BackendOptions):
    """A distilled model without guidance (FLUX.1 [schnell], FLUX.2 [klein]): no sampling options."""

    what: ClassVar[str] = "flow"
    guidance: ClassVar[str] = "none"


@dataclass(frozen=True)
class DistilledGuidanceOptions(BackendOptions):
    """guidance_scale: the distilled guidance value the transformer takes as an input (FLUX.1 [dev]: 3.5, the
    pipeline's default); one forward pass, no unconditional branch."""

    what: ClassVar[str] = "flow"
    guidance: ClassVar[str] = "distilled"
    guidance_scale: float = 3.5

    def __post_init__(self) -> None:
        self.set("guidance_scale", number(self.guidance_scale, "guidance_scale", lo=0.0))


@dataclass(frozen=True)
class CFGOptions(BackendOptions):
    """guidance_scale: true classifier-free guidance on the velocity (1 = the text branch only); negative_prompt:
    the unconditional branch's prompt ("" = the empty prompt, as the pipelines use)."""

    what: ClassVar[str] = "flow"
    guidance: ClassVar[str] = "cfg"
    guidance_scale: float = 4.0
    negative_prompt: str = ""

    def __post_init__(self) -> None:
        self.set("guidance_scale", number(self.guidance_scale, "guidance_scale", lo=0.0))
        self.set("negative_prompt", text(self.negative_prompt, "negative_prompt"))


OPTIONS: dict[str, type[BackendOptions]] = {"none": NoGuidanceOptions, "distilled": DistilledGuidanceOptions,
                                            "cfg": CFGOptions}
GUIDANCE_WORDS = {"none": "is distilled and takes no guidance",
                  "distilled": "takes a distilled guidance value (guidance_scale, an input of the transformer)",
                  "cfg": "uses true classifier-free guidance (guidance_scale, negative_prompt)"}


# ------------------------------------------------------------------------------------------------
# text and the velocity
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FlowText:
    """A prompt's text states ``hidden`` (1, L, D) and pooled vector (1, P) or None; ``null``: the empty
    prompt's, for classifier-free guidance (None for models without it)."""

    prompt: str
    hidden: torch.Tensor
    pooled: torch.Tensor | None = None
    null: FlowText | None = None


class FlowNet(Protocol):
    """A family's transformer call: ``v(x_s, s, hidden, pooled)`` on latents ``(n, C, h, w)`` of any size
    (tokens and positional ids made from the actual size); text states already have the batch ``n``."""

    def __call__(self, x_s: torch.Tensor, s: float, hidden: torch.Tensor,
                 pooled: torch.Tensor | None) -> torch.Tensor: ...


class TextEncoders(Protocol):
    """A family's text stack: ``encode(prompt) -> (hidden (1, L, D), pooled (1, P) or None)``, ``notes`` (what
    was truncated) and the modules to place (``modules``)."""

    def encode(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    def notes(self, prompt: str) -> list[str]: ...

    def modules(self) -> list[torch.nn.Module]: ...

    @property
    def tokens(self) -> int:
        """``L``: the text tokens ``encode`` returns (for the memory estimate's shapes)."""


def _batch(t: torch.Tensor, n: int) -> torch.Tensor:
    return t.expand(n, *t.shape[1:])


def _pooled(cond: FlowText, null: FlowText | None, n: int) -> torch.Tensor | None:
    """The pooled vectors of ``[null; cond]`` (or of ``cond`` alone), batched; None for models without them."""
    if cond.pooled is None:
        return None
    if null is None:
        return _batch(cond.pooled, n)
    if null.pooled is None:
        raise UsageError("the unconditional text has no pooled vector while the prompt has one")
    return torch.cat([_batch(null.pooled, n), _batch(cond.pooled, n)])


@dataclass
class GuidedVelocity:
    """The velocity model of a flow backend (``textsr.flow.VelocityModel``): ``net`` with classifier-free
    guidance ``scale`` (1: the text branch only, one call; else ``[null; text]`` in one batched call)."""

    net: FlowNet
    scale: float = 1.0
    negative: FlowText | None = None

    def __call__(self, x_s: torch.Tensor, s: float, cond: Any = None) -> torch.Tensor:
        if not isinstance(cond, FlowText):
            raise UsageError("a flow backend's denoiser needs the conditioning from its encode_prompt")
        n = x_s.shape[0]
        if self.scale == 1.0:
            return self.net(x_s, s, _batch(cond.hidden, n), _pooled(cond, None, n))
        null = self.negative or cond.null
        if null is None:
            raise UsageError("classifier-free guidance needs the empty prompt's states (encode_prompt gives them)")
        if self.scale == 0.0:  # the unconditional branch alone
            return self.net(x_s, s, _batch(null.hidden, n), _pooled(null, None, n))
        hidden = torch.cat([_batch(null.hidden, n), _batch(cond.hidden, n)])
        v = self.net(torch.cat([x_s, x_s]), s, hidden, _pooled(cond, null, n))
        v_null, v_text = v.chunk(2)
        return v_null + self.scale * (v_text - v_null)


def truncation_note(tokenizer: Any, text_in: str, max_length: int, what: str) -> list[str]:
    """A note when ``text_in`` has more tokens than ``what`` takes (the pipelines truncate it the same way)."""
    ids = tokenizer(text_in, truncation=False).input_ids
    if len(ids) <= max_length:
        return []
    dropped = tokenizer.decode(ids[max_length - 1:-1], skip_special_tokens=True).strip()
    return [f"the prompt has {len(ids)} tokens for {what}, which takes {max_length}: truncated, dropping {dropped!r}"]
