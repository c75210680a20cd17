"""unigame: UniGame self-adversarial post-training for unified multimodal models.

The top-level import stays light: heavy dependencies (transformers, datasets) load lazily
inside the modules that need them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
