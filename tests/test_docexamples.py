"""The examples in the docs run as written: the package docstring and the README's Python block."""

import doctest
import os
import re
from pathlib import Path

import lmzip

README = Path(__file__).resolve().parent.parent / "README.md"


def test_package_docstring():
    result = doctest.testmod(lmzip, verbose=False)
    assert result.attempted >= 2 and result.failed == 0


def test_readme_python_block(tmp_path, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the example writes notes.txt.lmz
    try:
        for block in blocks:
            exec(compile(block, str(README), "exec"), {})
    finally:
        os.chdir(cwd)
    assert "written through a language model" in capsys.readouterr().out
    assert (tmp_path / "notes.txt.lmz").exists()
