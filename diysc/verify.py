"""`diysc verify`: does this workspace reproduce the committed results?

Two checks, both through DVC's own machinery:

1. Metrics: `dvc metrics diff <rev> workspace` (every metrics file of every dvc.yaml), each value
   held to the tolerance of the first `TOLERANCES` row whose pattern matches `path:key`. A metric
   that is missing on one side fails.
2. Stage outputs: the output digests that `<rev>`'s dvc.lock files record against the workspace's
   (its dvc.lock after `dvc repro`, and the files themselves where they differ from it), stage by
   stage in pipeline order. The first stage whose outputs differ is where a rerun started to
   depart; every stage after it inherits the difference.

The tolerances and why they are what they are: docs/reproducibility.md.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from pathlib import Path

from diysc.errors import UserError

# (pattern on "metrics file:flattened.key", absolute tolerance, relative tolerance); the first
# matching row applies; (0, 0) is bit-identical. The bounds are for the tiny preset on CPU, measured
# between two instruction sets (docs/reproducibility.md), at about twice the largest difference seen.
TOLERANCES: tuple[tuple[str, float, float], ...] = (
    # What follows from the dataset and the params alone: the dataset is byte-identical everywhere.
    ("metrics/*:*pairs", 0, 0),
    ("metrics/*eval*.json:*keypoints", 0, 0),
    # Features differ in their last bits between CPU instruction sets (PyTorch's kernels).
    ("metrics/*sphere.json:before.*_angle_deg", 0, 1e-5),  # measured 7e-7
    ("metrics/*sphere.json:before.*", 0.005, 0),  # an angle may cross its threshold (~10 pairs)
    # Nearest-neighbour choices and training amplify those bits into different outcomes.
    ("metrics/*sphere.json:after.*_angle_deg", 30, 0),  # measured 14.3 degrees
    ("metrics/*sphere.json:after.*", 0.25, 0),  # fractions, measured 0.12
    ("metrics/*pseudo_labels.json:*precision_alpha*", 0.3, 0),  # measured 0.144
    ("metrics/*pseudo_labels.json:*points_per_pair", 0.6, 0),  # measured 0.256
    ("metrics/*pseudo_labels.json:*", 50, 0.3),  # counts, measured 23 (small), 6 % (large)
    ("metrics/*eval*.json:*pck_*", 7, 0),  # PCK in %, measured 3.2 (one keypoint: 0.3-1 points)
)


class VerifyError(UserError, RuntimeError):
    """The comparison cannot start (not a DVC repository, an unknown revision); names which."""


@dataclass(frozen=True)
class MetricCheck:
    path: str
    key: str
    old: float | None
    new: float | None
    abs_tol: float
    rel_tol: float

    @property
    def ok(self) -> bool:
        if self.old is None or self.new is None:
            return False
        if isinstance(self.old, str) or isinstance(self.new, str):
            return self.old == self.new
        return math.isclose(self.new, self.old, rel_tol=self.rel_tol, abs_tol=self.abs_tol)


def tolerance(path: str, key: str) -> tuple[float, float]:
    name = f"{path}:{key}"
    for pattern, abs_tol, rel_tol in TOLERANCES:
        if fnmatch.fnmatchcase(name, pattern):
            return abs_tol, rel_tol
    return 0.0, 0.0


def check_metrics(repo, rev: str) -> list[MetricCheck]:
    """Every metric of `rev` and the workspace, changed or not, with its tolerance."""
    diff = repo.metrics.diff(a_rev=rev, b_rev="workspace", all=True).get("diff", {})
    checks = []
    for path, values in sorted(diff.items()):
        for key, change in sorted(values.items()):
            checks.append(
                MetricCheck(path, key, change.get("old"), change.get("new"), *tolerance(path, key))
            )
    return checks


def _pipeline_order(repo) -> list:
    """Stages with every dependency before its dependents, ties in dvc.yaml order."""
    import networkx as nx

    stages = list(repo.index.stages)
    rank = {stage.addressing: i for i, stage in enumerate(stages)}
    graph = repo.index.graph.reverse()  # edges dependency -> dependent
    return list(nx.lexicographical_topological_sort(graph, key=lambda s: rank[s.addressing]))


def _key(stage) -> tuple[str, str]:
    """(dvc.yaml path from the repository root, stage name): the same in any revision's view."""
    fs = stage.repo.fs
    return fs.relpath(stage.dvcfile.path, stage.repo.root_dir), stage.name


def _out_digests(stage) -> dict[str, str | None]:
    return {str(out.def_path): out.hash_info.value for out in stage.outs}


def first_changed_stage(repo, rev: str) -> tuple[str, list[str]] | None:
    """(stage, its differing outputs) of the first stage in pipeline order whose outputs differ
    between `rev`'s dvc.lock and the workspace; None if all agree."""
    from dvc.repo import Repo

    with Repo(repo.root_dir, rev=repo.scm.resolve_rev(rev)) as old:
        locked = {_key(stage): _out_digests(stage) for stage in old.index.stages}
    status = repo.status()
    for stage in _pipeline_order(repo):
        before = locked.get(_key(stage), {})
        now = _out_digests(stage)
        differ = sorted(p for p in set(before) | set(now) if before.get(p) != now.get(p))
        for entry in status.get(stage.addressing, []):
            if isinstance(entry, dict):  # outputs edited since the workspace's dvc.lock
                changed = entry.get("changed outs", {})
                differ += sorted(p for p, why in changed.items() if why == "modified")
        if differ:
            path, name = _key(stage)
            return (name if path == "dvc.yaml" else f"{path}:{name}"), sorted(set(differ))
    return None


def _format(value) -> str:
    return "missing" if value is None else repr(value)


def verify(rev: str = "HEAD", root: str | None = None, echo=print) -> bool:
    """Report on the workspace against `rev`; True when every metric is within tolerance."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo
    from dvc.scm import SCMError
    from scmrepo.exceptions import SCMError as GitError

    try:
        repo = Repo(root)
    except NotDvcRepoError:
        where = Path(root or ".").resolve()
        raise VerifyError(
            f"{where}: not inside a DVC repository; run diysc verify in a clone of the project"
        ) from None
    with repo:
        try:
            repo.scm.resolve_rev(rev)
        except (SCMError, GitError) as err:  # an unknown revision, or no git repository
            raise VerifyError(f"--rev {rev}: {err} (in {repo.root_dir})") from None
        checks = check_metrics(repo, rev)
        changed = first_changed_stage(repo, rev)
    failed = [c for c in checks if not c.ok]
    exact = sum(c.ok and c.old == c.new for c in checks)
    echo(
        f"metrics: {len(checks)} compared with {rev}: {exact} identical, "
        f"{len(checks) - exact - len(failed)} within tolerance, {len(failed)} beyond"
    )
    for c in failed:
        echo(
            f"  {c.path}:{c.key}: {rev} {_format(c.old)}, workspace {_format(c.new)} "
            f"(tolerance abs {c.abs_tol:g}, rel {c.rel_tol:g})"
        )
    if changed is None:
        echo(f"stages: every output matches {rev}'s dvc.lock")
    else:
        stage, outs = changed
        echo(
            f"stages: first stage whose outputs differ from {rev}'s dvc.lock: {stage} ({', '.join(outs)})"
        )
    return not failed
