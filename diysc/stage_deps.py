"""The code deps of the DVC stages: each stage script's import closure, written into the pipelines.

A stage's code deps are its script (`python -m stages.<name>` in its `cmd`) and every `diysc` module
the script imports (`diysc.provenance.import_closure`), so DVC reruns the stage when any of them
changes and not otherwise. A script that records digests of code it does not import names those
modules in `CODE_DEPS` (`stages/backbones.py`): their closures count as its own. A stage run per
dataset also lists that dataset's own code, which its script loads by name (`diysc.datasets`): a
templated dep, `diysc/datasets/${key}` (the package folder: what builds the dataset) or
`diysc/datasets/${key}/__init__.py` (its reader), which `update` keeps as it is; the modules the
datasets' code of that kind imports outside the dataset packages (the SPair-71k layout reader, ...)
join the stage's listed closure. `update` rewrites those entries of each stage's `deps:` list in
`PIPELINES` and touches no other byte of the files: data deps, comments, templating and layout stay
as they are. `tests/test_stage_deps.py` checks the result against DVC's own resolution.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from diysc.errors import UserError
from diysc.io import write_text
from diysc.provenance import PACKAGE, import_closure

PIPELINES = ("dvc.yaml", "ablations/*/dvc.yaml")
SCRIPT = re.compile(r"\bpython -m stages\.(\w+)\b")
CODE_DIRS = (PACKAGE, "stages")
DECLARED = re.compile(r"^CODE_DEPS\b", re.MULTILINE)
DATASETS = Path(PACKAGE) / "datasets"  # one package per dataset (diysc/datasets/__init__.py)
DATASET_DEP = re.compile(rf"^{DATASETS.as_posix()}/\$\{{[^}}]+\}}(/__init__\.py)?$")


def pipeline_files(root: Path) -> list[Path]:
    """The pipeline files whose code deps `update` keeps current."""
    return [f for pattern in PIPELINES for f in sorted(root.glob(pattern))]


def script_of(cmd: str | list[str]) -> Path | None:
    """The stage script a `cmd` runs, relative to the repository root, or None."""
    match = SCRIPT.search(" ".join(cmd) if isinstance(cmd, list) else cmd)
    return Path(f"stages/{match.group(1)}.py") if match else None


def expected_code_deps(script: Path, root: Path, dataset_code: str | None = None) -> list[Path]:
    """The script, then its import closure and that of its `CODE_DEPS` (sorted), relative to
    `root`; with `dataset_code` ("build" or "reader", see `dataset_code_of`), what the datasets'
    code of that kind imports besides."""
    closure = set(import_closure(root / script, root))
    for module in declared_code(script, root):
        closure.update(import_closure(module, root))
    if dataset_code is not None:
        closure |= dataset_imports(root, dataset_code)
    return [script, *sorted(closure)]


def declared_code(script: Path, root: Path) -> list[str]:
    """The modules a script runs without importing them, as its `CODE_DEPS` names them
    (`stages/backbones.py` records digests of the registered backbones' code); [] without one.
    Only a script that defines `CODE_DEPS` is imported, to read it."""
    if not DECLARED.search((root / script).read_text()):
        return []
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    module = ".".join(script.with_suffix("").parts)
    return list(importlib.import_module(module).CODE_DEPS)


def dataset_code_of(deps: list[str]) -> str | None:
    """Which of a dataset's code a stage's (unresolved) deps name: "build" for its package folder,
    "reader" for its `__init__.py`, None for neither."""
    found = [DATASET_DEP.match(dep) for dep in deps]
    kinds = {"reader" if match.group(1) else "build" for match in found if match}
    if len(kinds) > 1:
        raise UserError(f"deps {deps} name both a dataset's folder and its reader")
    return kinds.pop() if kinds else None


def dataset_imports(root: Path, kind: str) -> set[Path]:
    """What the code of kind `kind` of every dataset package under `root` imports outside the
    dataset packages (those are deps of their own stages only)."""
    packages = sorted(p for p in (root / DATASETS).iterdir() if (p / "__init__.py").is_file())
    found: set[Path] = set()
    for package in packages:
        modules = sorted(package.rglob("*.py")) if kind == "build" else [package / "__init__.py"]
        for module in modules:
            found.update(import_closure(module, root))
    own = [p.relative_to(root) for p in packages]
    return {f for f in found if not any(p in f.parents for p in own)}


def is_code(path: Path) -> bool:
    """Whether a dep (relative to the repository root) is project code, which `update` owns."""
    return bool(path.parts) and path.parts[0] in CODE_DIRS


@dataclass
class _Stage:
    name: str
    wdir: Path  # relative to the root
    script: Path
    items: list[tuple[int, int, str]]  # each dep: (line, column, text) of its plain scalar


def update(root: str | Path, check: bool = False) -> list[str]:
    """Rewrite the stale code deps of every pipeline under `root` (not with `check`); return the
    stale stages as `<file>:<stage>`."""
    root = Path(root).resolve()
    if not (root / "dvc.yaml").is_file():
        raise UserError(f"{root / 'dvc.yaml'}: not found (run from the repository's root)")
    stale = []
    for path in pipeline_files(root):
        text = path.read_text()
        new, names = _rewrite(text, path, root)
        stale += [f"{path.relative_to(root).as_posix()}:{name}" for name in names]
        if new != text and not check:
            write_text(path, new)
    return stale


def _rewrite(text: str, path: Path, root: Path) -> tuple[str, list[str]]:
    """`text` with each stage's code deps replaced by its script's; the names of those that
    changed. Edits go bottom-up so the line numbers of the stages above stay valid."""
    lines = text.splitlines(keepends=True)
    stale = []
    for stage in reversed(_stages(text, path, root)):
        code = [item for item in stage.items if _is_code_item(item[2], stage.wdir)]
        at = [line for line, _, _ in code]
        first, column, _ = (code or stage.items)[0]  # new code deps go where the old ones began
        prefix = lines[first][:column]  # the indent and "- " of a dep
        dataset_code = dataset_code_of([text for _, _, text in stage.items])
        wanted = [
            f"{prefix}{Path(os.path.relpath(root / dep, root / stage.wdir)).as_posix()}\n"
            for dep in expected_code_deps(stage.script, root, dataset_code)
        ]
        if [lines[line] for line in at] == wanted:
            continue
        stale.append(stage.name)
        for line in reversed(at):
            del lines[line]
        lines[first:first] = wanted
    return "".join(lines), sorted(stale)


def _is_code_item(value: str, wdir: Path) -> bool:
    if "${" in value:
        return False
    return is_code(Path(os.path.normpath(wdir / value)))


def _stages(text: str, path: Path, root: Path) -> list[_Stage]:
    """Every stage definition of a pipeline file that runs a stage script, in file order."""
    try:
        document = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({err})") from None
    stages = _get(document, "stages")
    found = []
    for key, body in stages.value if isinstance(stages, yaml.MappingNode) else []:
        if _get(body, "foreach") is not None:
            body = _get(body, "do")
        cmd = _value(_get(body, "cmd"))
        script = script_of(cmd) if cmd is not None else None
        if script is None:
            continue
        where = f"{path}: stage {key.value!r}"
        if not (root / script).is_file():
            raise UserError(f"{where}: its cmd runs {script}, which does not exist")
        deps = _get(body, "deps")
        if not isinstance(deps, yaml.SequenceNode) or deps.flow_style or not deps.value:
            raise UserError(f"{where}: `deps:` must be a block list (one `- path` per line)")
        items = []
        for node in deps.value:
            if not isinstance(node, yaml.ScalarNode) or node.style is not None:
                raise UserError(
                    f"{where}: dep at line {node.start_mark.line + 1} is not a plain path"
                )
            items.append((node.start_mark.line, node.start_mark.column, node.value))
        lines = {line for line, _, _ in items}
        if len(lines) != len(items):
            raise UserError(f"{where}: `deps:` must hold one path per line")
        wdir = _value(_get(body, "wdir")) or "."
        if "${" in wdir:
            raise UserError(f"{where}: a templated wdir ({wdir}) is not supported")
        base = Path(os.path.relpath(path.parent / wdir, root))
        found.append(_Stage(key.value, base, script, items))
    return found


def _get(node, key: str):
    """The value node of `key` in a mapping node, or None."""
    if not isinstance(node, yaml.MappingNode):
        return None
    return next((v for k, v in node.value if k.value == key), None)


def _value(node) -> str | list[str] | None:
    if isinstance(node, yaml.ScalarNode):
        return node.value
    if isinstance(node, yaml.SequenceNode):
        return [n.value for n in node.value if isinstance(n, yaml.ScalarNode)]
    return None
