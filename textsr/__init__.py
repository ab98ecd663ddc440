"""textsr: zero-shot, text-guided, explorable image super-resolution.

``textsr.explore(image, prompts, scale=..., model=..., solver=...)`` is the entry point; heavy modules
load lazily so that ``import textsr`` and ``textsr --help`` stay fast.
"""

from ._version import __version__

__all__ = ["explore", "explore_request", "rank", "rank_request", "Ranking", "Exploration", "ExploreRequest",
           "check_output_folder", "load_model", "__version__"]


def __getattr__(name):
    if name in ("explore", "explore_request", "Exploration", "ExploreRequest", "expand_prompts"):
        from . import api as _explore

        return getattr(_explore, name)
    if name in ("rank", "rank_request", "Ranking"):  # P(prompt | y): textsr.ranking
        from . import ranking

        return getattr(ranking, name)
    if name == "load_model":  # load once, explore many times
        from .model_registry import load_model

        return load_model
    if name == "check_output_folder":  # the CLI's check before any work, for API users
        from .outdir import check_output_folder

        return check_output_folder
    raise AttributeError(f"module 'textsr' has no attribute {name!r}")
