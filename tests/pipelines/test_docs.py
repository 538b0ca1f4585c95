"""Docs match the code: the config reference is generated, the README opens with two commands."""

from __future__ import annotations

from pipelines.docgen import USAGE, config_reference, render
from tests.conftest import REPO


def test_config_reference_in_usage_md_is_current():
    text = USAGE.read_text()
    assert config_reference() in text
    assert render(text) == text, "run: python -m pipelines.docgen"


def test_readme_starts_with_the_two_commands_ci_runs():
    lines = (REPO / "README.md").read_text().splitlines()
    fence = lines.index("```bash")
    commands = [line.split("#")[0].strip() for line in lines[fence + 1 : fence + 3]]
    assert commands == ["make demo", "make test"]
    assert lines[fence + 3] == "```"
    assert "make test" in (REPO / ".ci" / "run").read_text()
