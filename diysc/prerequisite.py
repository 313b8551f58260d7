"""One thing a configuration needs, with its verdict: the record `diysc.prerequisites` gathers and
each dataset's builder gives for its own sources (a leaf, so neither imports the other)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Prerequisite:
    what: str  # the thing, as the user names it (a param and its value, a device)
    found: str  # where it was found, "" when missing
    how: str  # how to provide it when missing

    @property
    def ok(self) -> bool:
        return bool(self.found)
