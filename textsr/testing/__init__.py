"""Tiny models built in code for tests, examples and the GPU check: each builder saves a complete
model folder (weights + ``textsr_model.json``) that loads back through the real loading code.

* ``tiny_deepfloyd_if.build_tiny_if``, ``tiny_unclip.build_tiny_unclip``, ``tiny_pixel.build_tiny_pixel``,
  ``tiny_latent.build_tiny_latent``, ``tiny_kandinsky.build_tiny_kandinsky``; ``tiny_clip`` holds the
  shared CLIP pieces.
"""
