"""robalign: align language models to pairwise preferences that may be wrong."""

__version__ = "0.1.0"
