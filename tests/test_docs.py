"""The README's examples run and say what the README says they say."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_starts_with_setup_and_test_commands() -> None:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", text, re.S)
    assert block is not None
    commands = block.group(1).strip().splitlines()
    assert commands == ["python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[dev]'",
                        "pytest"]


def test_readme_library_examples_print_what_they_claim() -> None:
    """Every python block of the README runs (from the repository root) and prints what its
    last ``# `` comment says."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 2
    for code in blocks:
        claimed = [line.removeprefix("# ") for line in code.splitlines() if line.startswith("# ")]
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.chdir(ROOT):
            exec(compile(code, "README.md", "exec"), {})
        assert out.getvalue().strip() == claimed[-1]


def test_readme_table_matches_expected_md() -> None:
    """The README's matrix and EXPECTED.md agree on every pass/FAIL cell."""
    readme = (ROOT / "README.md").read_text()
    expected = (ROOT / "examples" / "scenarios" / "EXPECTED.md").read_text()

    def cells(text: str) -> dict[str, list[bool]]:
        rows = {}
        for line in text.splitlines():
            parts = [p.strip() for p in line.strip().strip("|").split("|")]
            if len(parts) == 8 and parts[0].endswith(".yaml"):
                rows[parts[0]] = ["FAIL" in part for part in parts[1:]]
        return rows

    assert cells(readme) == cells(expected)
