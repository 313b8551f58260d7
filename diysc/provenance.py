"""What a result was computed from: the project code it ran and the content of the files it read.

Two uses share these definitions. A training stage resumes a checkpoint only when the run that
wrote it had the same params, the same input *content* and the same code (`diysc.resume`), and a
test checks that every stage's `dvc.yaml` deps cover the project modules the stage imports, so DVC
reruns it when any of them changes. Both need the same notion of "the code a module runs": its
static import closure within the `diysc` package, found by reading the import statements (module
level and function level alike), so nothing has to be executed to know it.
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

PACKAGE = "diysc"
PACKAGE_DIR = Path(__file__).resolve().parent
_CHUNK = 1 << 22


def module_file(name: str, root: Path = PACKAGE_DIR.parent) -> Path | None:
    """The source file of a `diysc` module or package under `root`, or None if there is none."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(source: Path, module: str | None = None) -> set[str]:
    """Names of the modules `source` imports anywhere in it (relative imports resolved)."""
    tree = ast.parse(source.read_text(), filename=str(source))
    package = _package_of(source, module)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(p for p in [*parts, base] if p)
            names.add(base)
            # `from pkg import name` imports the submodule pkg.name when there is one.
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def import_closure(entry: str | Path, root: Path = PACKAGE_DIR.parent) -> list[Path]:
    """Every `diysc` source file that running `entry` (a module name or a script) executes.

    Includes the `__init__.py` of each package on the way, since importing `diysc.a.b` runs
    `diysc/__init__.py` and `diysc/a/__init__.py` first. Sorted, relative to `root`.
    """
    if isinstance(entry, Path) or str(entry).endswith(".py"):
        todo = [(Path(entry), None)]
    else:
        path = module_file(str(entry), root)
        if path is None:
            raise ValueError(f"{entry}: not a module of the {PACKAGE} package under {root}")
        todo = [(path, str(entry))]
    seen: set[Path] = set()
    while todo:
        path, name = todo.pop()
        path = path.resolve()
        if path in seen:
            continue
        seen.add(path)
        for imported in imported_modules(path, name):
            parts = imported.split(".")
            for i in range(1, len(parts) + 1):  # the packages on the way, then the module
                prefix = ".".join(parts[:i])
                found = module_file(prefix, root)
                if found is not None and found.resolve() not in seen:
                    todo.append((found, prefix))
    root = root.resolve()
    return sorted(p.relative_to(root) for p in seen if p.is_relative_to(root / PACKAGE))


def code_digest(*modules: str, root: Path = PACKAGE_DIR.parent) -> str:
    """sha256 over the sources of the modules' import closure (names and bytes)."""
    files = sorted({f for m in modules for f in import_closure(m, root)})
    h = hashlib.sha256()
    for rel in files:
        h.update(rel.as_posix().encode() + b"\0")
        h.update((root / rel).read_bytes() + b"\0")
    return h.hexdigest()


def content_digest(paths: Iterable[str | Path]) -> str:
    """sha256 over the bytes of the given files and of every file under the given directories.

    Names are taken relative to each given path (so a moved dataset has the same digest), and
    hidden files (temporary writes, `.ipynb_checkpoints`) are skipped.
    """
    h = hashlib.sha256()
    for top in map(Path, paths):
        if not top.exists():
            raise FileNotFoundError(f"{top}: input not found")
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        h.update(f"<{top.name}>".encode())
        for path in files:
            rel = path.relative_to(top).as_posix() if path != top else path.name
            if any(part.startswith(".") for part in Path(rel).parts):
                continue
            h.update(rel.encode() + b"\0")
            with path.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
            h.update(b"\0")
    return h.hexdigest()


def run_key(parts: Mapping[str, Any]) -> str:
    """A digest of a run's identity (params, seed, input and code digests), as canonical JSON."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _package_of(source: Path, module: str | None) -> str:
    """The package relative imports in `source` resolve against."""
    if module is None:
        return ""
    return module if source.name == "__init__.py" else module.rpartition(".")[0]
