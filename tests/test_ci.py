"""CI runs the README's test command as written, the one run of the whole suite, in a copy whose
path has spaces and non-ASCII characters (a clone anywhere must work)."""

from __future__ import annotations

from tests.pipeline import ROOT, readme_commands


def test_ci_ends_with_the_readme_test_command():
    _, tests = readme_commands()
    assert tests == "./install.sh && pytest"
    lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()]
    assert lines[-1] == tests


def test_ci_runs_the_suite_in_a_path_with_spaces_and_non_ascii_characters():
    text = (ROOT / ".ci" / "run").read_text()
    assert 'spaced="$(mktemp -d)/dir with spaces/ünïcødé é"' in text
    assert 'cd "$spaced/diysc"' in text
