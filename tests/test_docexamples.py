"""The examples in the docs run as written: the package docstring, the README's Python block
and the sessions (```pycon blocks) of docs/api.md."""

import doctest
import os
import re
from pathlib import Path

import lmzip

README = Path(__file__).resolve().parent.parent / "README.md"
API = README.parent / "docs" / "api.md"


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


def test_api_page_sessions(tmp_path):
    """docs/api.md's ```pycon blocks, in order, as one doctest session."""
    text = API.read_text()
    blocks = re.findall(r"```pycon\n(.*?)```", text, re.S)
    assert len(blocks) >= 8
    test = doctest.DocTestParser().get_doctest("\n".join(blocks), {}, str(API), str(API), 0)
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the examples write notes.txt.lmz
    try:
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        runner.run(test)
    finally:
        os.chdir(cwd)
    result = runner.summarize(verbose=False)
    assert result.attempted >= 30 and result.failed == 0
