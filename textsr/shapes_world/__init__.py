"""The built-in offline world: procedurally rendered shape scenes, their Gaussian-mixture catalogue and
a prompt parser.  ``build_catalog()`` gives the components (means, factored covariances, tags,
captions); ``parse_prompt()`` turns text into the tags that select components."""

from .catalog import (
                      BACKGROUND_STD,
                      DEFAULT_BACKGROUNDS,
                      DEFAULT_COLOURS,
                      DEFAULT_POSITIONS,
                      DEFAULT_SIZES,
                      OBJECT_STD,
                      S2,
                      Catalog,
                      Scene,
                      build_catalog,
                      downsample,
                      save_catalog_preview,
)
from .prompts import (
                      DEFAULT_VOCABULARY,
                      ParsedPrompt,
                      PromptError,
                      Vocabulary,
                      describe_tags,
                      parse_prompt,
                      template_prompts,
)
from .render import (
                      PALETTE,
                      POSITION_NAMES,
                      POSITIONS,
                      SHAPES,
                      SIZES,
                      Rendering,
                      SceneObject,
                      render_objects,
                      render_scene,
                      shape_mask,
)

__all__ = [
    "BACKGROUND_STD", "DEFAULT_BACKGROUNDS", "DEFAULT_COLOURS", "DEFAULT_POSITIONS", "DEFAULT_SIZES",
    "DEFAULT_VOCABULARY", "OBJECT_STD", "PALETTE", "POSITIONS", "POSITION_NAMES", "S2", "SHAPES", "SIZES",
    "Catalog", "ParsedPrompt", "PromptError", "Rendering", "Scene", "SceneObject", "Vocabulary",
    "build_catalog", "describe_tags", "downsample", "parse_prompt", "render_objects", "render_scene",
    "save_catalog_preview", "shape_mask", "template_prompts",
]
