"""The DIY-SC adapter: model (official state-dict names), losses, training data and loop."""

from diysc.adapter.model import Adapter, load_adapter

__all__ = ["Adapter", "load_adapter"]
