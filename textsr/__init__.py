"""textsr: zero-shot, text-guided, explorable image super-resolution."""

__version__ = "0.1.0"
