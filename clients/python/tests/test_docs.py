"""The README's "Attach your backend" section exists twice (here and for the project README): keep them equal."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, Sidewire

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


def test_the_curl_example_of_the_section_works_against_sidewire(sidewire: Sidewire) -> None:
    import json
    import shutil

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    section = (PACKAGE / "README-section.md").read_text()
    (block,) = [b for b in re.findall(r"```sh\n(.*?)```", section, flags=re.S) if "curl" in b]
    result = subprocess.run(
        ["bash", "-c", block.replace("http://127.0.0.1:8790", sidewire.url)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert json.loads(result.stdout) == {"accepted": 2, "duplicates": 0, "seqs": [1, 2]}
    assert [e["id"] for e in sidewire.events()] == ["job-7f3a-1", "job-7f3a-2"]
