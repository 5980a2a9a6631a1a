"""The README's "Attach your backend" section exists twice (here and for the project README): keep them equal."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from conftest import REPO

PACKAGE = Path(__file__).resolve().parents[1]


def as_in_package_readme(section: str) -> str:
    """The section's links rewritten from the repository root to clients/python/."""
    section = section.replace("](clients/python/README.md)", "](#sidewire-client)")
    section = section.replace("](clients/python)", "](.)")
    return re.sub(r"\]\((examples|deploy)/", r"](../../\1/", section)


def test_readme_contains_the_section_for_the_project_readme() -> None:
    section = (PACKAGE / "README-section.md").read_text()
    assert section.startswith("## Attach your backend\n")
    assert as_in_package_readme(section).strip() in (PACKAGE / "README.md").read_text()


def test_links_of_the_section_point_at_existing_paths() -> None:
    section = (PACKAGE / "README-section.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)\)", section):
        assert (REPO / target).exists(), target


def test_the_shell_example_of_the_section_is_valid_bash() -> None:
    section = (PACKAGE / "README-section.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    assert blocks
    for block in blocks:
        subprocess.run(["bash", "-n"], input=block, text=True, check=True)
