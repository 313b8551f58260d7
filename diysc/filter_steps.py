"""The pseudo-label toggles and filter steps, in the order generation applies them: one entry each.

Generation (`diysc.pseudo.labels`), the quality report, the headline and its precision plot
(`diysc.headline`), the paper's figures (`diysc.paper`) and the tables (`diysc.tables`) iterate
over these entries; none of them names a toggle or a step.

A *toggle* is a top-level param that the pseudo-labels record in their settings (and so each
run's train.json): `mask` (candidates restricted to the object mask, which every step uses),
`cycle` (three values: none, strict, relaxed), `chaining`, `sphere_filter`. A *step* is a point
of the filter chain whose matches the quality report scores: raw NN, after the cycle check, after
chaining, after each rejection filter, and the emitted labels. A step runs whatever its toggle
says (the cycle step of a run with `cycle: none` keeps every match), so every run reports every
step.

Steps of kind "rejection" are applied by generation through this registry, in order, to the
matches of every emitted pair: a new one is an entry here, its function (`function(matches,
settings) -> keep mask`, see `diysc.pseudo.filters`) and its toggle in the params schema. The
others are built into the matching itself (`diysc.pseudo.chain`); their `function` names it.
Functions are named, not imported, so that readers of the records (tables, headline) do not
depend on the generator's code.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Toggle:
    """A pseudo-label param: its recorded name (also its key in `diysc.paper`), the value that
    leaves its step out, the Tab. 5 columns it marks and the words a table row uses for it."""

    param: str
    off: Any
    columns: tuple[tuple[Any, str], ...]  # (value, Tab. 5 header): ✓ where the run has the value
    words: Mapping[Any, str]  # value → its words in a row label (none: not named; "(…)": a suffix)

    def value(self, settings: Mapping[str, Any]) -> Any:
        """The toggle's value in recorded settings; labels recorded before it existed ran off."""
        return settings.get(self.param, self.off)


TOGGLES = (  # the steps' toggles in step order, then the candidates' (Tab. 5's column order)
    Toggle(
        "cycle",
        "none",
        (("strict", "cyc. cons."), ("relaxed", "relaxed c.c.")),
        {
            "none": "naive pseudo-labels",
            "strict": "strict cycle consistency",
            "relaxed": "relaxed cycle consistency",
        },
    ),
    Toggle("chaining", False, ((True, "chaining"),), {True: "chaining"}),
    Toggle("sphere_filter", False, ((True, "sph. rej."),), {True: "sphere rejection"}),
    Toggle("mask", False, ((True, "mask"),), {False: "(no mask)"}),
)
TOGGLE = {t.param: t for t in TOGGLES}


@dataclass(frozen=True)
class Step:
    """A point of the filter chain: its report name, plot label, toggle and what applies it."""

    name: str  # key in metrics/pseudo_labels.json (`<split>.<name>`) and the precision plot
    label: str  # its words on the precision plot's axis
    toggle: str | None  # the param that switches it (None: always the same)
    kind: str  # "matching" (inside the chain propagation), "rejection" or "emitted"
    function: str | None = None  # "module:name" of what applies it

    def applies(self, settings: Mapping[str, Any]) -> bool:
        return self.toggle is None or TOGGLE[self.toggle].value(settings) != TOGGLE[self.toggle].off

    def load(self) -> Callable:
        module, _, name = self.function.partition(":")
        return getattr(importlib.import_module(module), name)


STEPS = (
    Step("raw_nn", "raw NN", None, "matching", "diysc.pseudo.matching:nearest_neighbours"),
    Step("cycle", "cycle", "cycle", "matching", "diysc.pseudo.matching:cycle_mask"),
    Step("chaining", "chaining", "chaining", "matching", "diysc.pseudo.chain:propagate"),
    Step(
        "sphere_filter",
        "sphere filter",
        "sphere_filter",
        "rejection",
        "diysc.pseudo.filters:reject_by_sphere",
    ),
    Step("emitted", "emitted", None, "emitted"),
)
REJECTIONS = tuple(s for s in STEPS if s.kind == "rejection")


def plot_axis_label() -> str:
    """The precision plot's x label: 'step (0 raw NN, 1 cycle, …)' (dvc.yaml carries a copy)."""
    return "step (" + ", ".join(f"{i} {s.label}" for i, s in enumerate(STEPS)) + ")"
