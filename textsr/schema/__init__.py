"""The results.json schema (JSON Schema draft 2020-12) and its validator.

``jsonschema`` is imported lazily, so importing textsr never needs it.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

SCHEMA_FILE = "results.schema.json"
_MAX_REPORTED = 10


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """The parsed results schema (cached; do not mutate)."""
    return json.loads(resources.files(__name__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8"))


def validate_results(obj: Any) -> None:
    """Raise ``ValueError`` listing every place where ``obj`` breaks the results schema.

    Each line names the JSON path (e.g. ``prompts/0/samples/1/lr_psnr``) and the problem.
    """
    errors = schema_errors(obj)
    if errors:
        more = f"\n  ... and {len(errors) - _MAX_REPORTED} more" if len(errors) > _MAX_REPORTED else ""
        raise ValueError(
            "results do not match textsr/schema/results.schema.json:\n  "
            + "\n  ".join(errors[:_MAX_REPORTED])
            + more
        )


def schema_errors(obj: Any) -> list[str]:
    """Every schema violation in ``obj`` as 'path: message', sorted by path; [] when valid."""
    try:
        import jsonschema
    except ImportError as e:  # pragma: no cover - jsonschema is a dependency
        raise ImportError("validating results.json needs jsonschema: pip install 'jsonschema>=4.20'") from e
    validator = jsonschema.Draft202012Validator(load_schema())
    found = sorted(validator.iter_errors(obj), key=lambda err: [str(p) for p in err.absolute_path])
    return [f"{'/'.join(str(p) for p in err.absolute_path) or '(top level)'}: {err.message}" for err in found]
