"""Refuses `dvc exp run` when the committed params.yaml was edited by hand.

params.yaml is generated from conf/ (its first line says so), and `dvc exp run` recomposes it from
conf/ before any stage runs: a hand edit would be overwritten, every stage skipped and the run
reported a success. DVC asks Hydra for its plugins (this namespace, in the repository's root)
before it writes the file, so this module, imported then, is the one place that can still see the
edit. It only acts inside `dvc exp run`, and it uses git alone (no `diysc` import): the edit is a
change of params.yaml against HEAD while conf/ is unchanged, so the file is no longer conf/'s
composition. `dvc repro` refuses the same edit in `diysc.config.compose.check_not_hand_edited`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

GENERATED = "# GENERATED from conf/"  # the start of diysc.config.GENERATED_HEADER


def _in_exp_run(argv: list[str]) -> bool:
    return any(a == "exp" and b == "run" for a, b in zip(argv, argv[1:], strict=False))


def _hand_edited(root: Path) -> bool:
    params = root / "params.yaml"
    if not params.is_file() or not params.read_text(encoding="utf-8").startswith(GENERATED):
        return False  # written by DVC's composition (an experiment), not the committed file
    changed = subprocess.run(
        ["git", "diff", "--name-only", "HEAD", "--", "conf", "params.yaml"],
        cwd=root, capture_output=True, text=True, check=False,
    ).stdout.split()  # fmt: skip
    return changed == ["params.yaml"]


def _guard() -> None:
    root = Path.cwd()
    if not _in_exp_run(sys.argv) or not _hand_edited(root):
        return
    from dvc.exceptions import DvcException

    raise DvcException(
        f"{root / 'params.yaml'}: hand-edited; `dvc exp run` recomposes it from conf/ and would "
        "silently drop the edit. Run the experiment with `dvc exp run -S key=value` (after "
        "`git checkout params.yaml`), or make the change in conf/ (then `diysc compose-params`)"
    )


_guard()
