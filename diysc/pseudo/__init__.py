"""Pseudo-label generation: matching, sampling, filters, chaining and label quality."""
