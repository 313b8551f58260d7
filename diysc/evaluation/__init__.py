"""Evaluation: PCK, predictions, per-viewpoint and symmetry analyses, and the evaluation run."""
