"""CI runs the README's test command as written: the one run of the whole suite."""

from __future__ import annotations

from tests.pipeline import ROOT, readme_commands


def test_ci_ends_with_the_readme_test_command():
    _, tests = readme_commands()
    assert tests == 'pip install -r requirements.lock -e ".[dev]" && pytest'
    lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()]
    assert lines[-1] == tests
