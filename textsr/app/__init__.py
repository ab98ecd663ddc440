"""``textsr app``: a local web page for exploring the solution space by hand (gradio).

``launch(host, port, concurrency)`` serves it; ``build_app(...)`` returns the ``gr.Blocks`` without
serving (tests). ``core`` holds the logic without gradio, ``ui`` the page and its handlers.
"""

from .ui import Handlers, build_app, launch

__all__ = ["Handlers", "build_app", "launch"]
