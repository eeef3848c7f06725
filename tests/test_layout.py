"""The package's shape: no import circles, and no layer importing one above it.

Imports are read with ``ast`` (nothing is imported), including those inside functions,
so a lazy import cannot hide a circle.  The layers, lowest first:

    errors
    < format, coding, cdf, tokenization, detect, classic, sizing   (the pipeline's lower half)
    < predictors/, gpu/                                    (everything that gives probabilities)
    < codec, core, fileobj, ranges, parallel, lmzip itself  (the pipeline's upper half, the API)
    < measure/                                             (the measuring tools)
    < cli/, __main__                                       (the command line)

A module may import its own layer and those below.  A module in a folder takes the
folder's layer; a new module directly in ``lmzip/`` must be given one here.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lmzip"

LAYERS = [
    ("errors", {"lmzip.errors"}),
    ("pipeline, lower half", {"lmzip.format", "lmzip.coding", "lmzip.cdf", "lmzip.tokenization", "lmzip.detect",
                              "lmzip.classic", "lmzip.sizing"}),
    ("predictors", {"lmzip.predictors", "lmzip.gpu"}),
    ("pipeline, upper half", {"lmzip.codec", "lmzip.core", "lmzip.fileobj", "lmzip.ranges", "lmzip.parallel",
                              "lmzip"}),
    ("measure", {"lmzip.measure"}),
    ("cli", {"lmzip.cli", "lmzip.__main__"}),
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _defines(package: str, name: str) -> bool:
    """Whether ``from package import name`` takes a name of the package's ``__init__``."""
    tree = ast.parse(MODULES[package].read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if any((a.asname or a.name.split(".")[0]) == name for a in node.names):
                return True
    return False


def imports(module: str) -> dict[str, int]:
    """The lmzip modules ``module`` imports, anywhere in it, with the first line of each."""
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    found: dict[str, int] = {}

    def add(name: str, line: int) -> None:
        if name != module:
            found.setdefault(name, line)

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source not in MODULES:
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in MODULES:
                    add(sub, node.lineno)  # from package import submodule
                elif source != module and (not MODULES[source].name == "__init__.py"
                                           or _defines(source, alias.name)):
                    add(source, node.lineno)
                # else: a compiled extension (lmzip._cdf), which imports nothing of lmzip
    return found


def layer(module: str) -> int:
    for level, (_, members) in enumerate(LAYERS):
        if module in members:
            return level
    for level, (_, members) in enumerate(LAYERS):
        if any(module.startswith(m + ".") for m in members if m != "lmzip"):
            return level
    raise AssertionError(f"{module} is in no layer: give it one in tests/test_layout.py")


def test_the_reader_sees_what_it_must():
    assert {"lmzip.core", "lmzip.predictors.mixing", "lmzip.predictors.ngram", "lmzip.measure.bench",
            "lmzip.cli.commands"} <= set(MODULES)
    assert imports("lmzip.predictors.mixing").keys() >= {"lmzip.cdf", "lmzip.predictors.ngram"}
    assert "lmzip.predictors.llamacpp" in imports("lmzip.predictors.registry")  # a function-local import
    assert "lmzip.cli.commands" in imports("lmzip.cli")
    assert "lmzip" not in imports("lmzip.cdf")  # from . import _cdf: the C extension, not the package
    assert "lmzip" in imports("lmzip.measure.bench")  # from .. import __version__


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_has_a_layer(module):
    layer(module)


def test_no_layer_imports_a_higher_one():
    wrong = [f"{m} ({LAYERS[layer(m)][0]}) imports {d} ({LAYERS[layer(d)][0]}), line {line}"
             for m in MODULES for d, line in imports(m).items() if layer(d) > layer(m)]
    assert not wrong, "\n".join(wrong)


def test_no_import_circle():
    graph = {m: set(imports(m)) for m in MODULES}
    circles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                circles.append(" -> ".join(path[path.index(d):] + [d]))
            elif d not in state:
                visit(d)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not circles, "\n".join(circles)


def test_the_checks_catch_what_they_are_for(monkeypatch):
    """The circle the package had (mixing <-> ngram) and an upward import both fail."""
    graph = {"a": {"b"}, "b": {"a"}}
    monkeypatch.setitem(globals(), "imports", lambda m: dict.fromkeys(graph[m], 1))
    monkeypatch.setitem(globals(), "MODULES", dict.fromkeys(graph))
    with pytest.raises(AssertionError, match="a -> b -> a"):
        test_no_import_circle()
    graph = {"lmzip.core": {"lmzip.cli.commands"}, "lmzip.cli.commands": set()}
    monkeypatch.setitem(globals(), "MODULES", dict.fromkeys(graph))
    with pytest.raises(AssertionError, match=r"lmzip.core \(pipeline, upper half\) imports lmzip.cli.commands"):
        test_no_layer_imports_a_higher_one()
