"""diysc: a reproducibility harness for DIY-SC (semantic correspondence from pseudo-labels)."""

__version__ = "0.1.0"
