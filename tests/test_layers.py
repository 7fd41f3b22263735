"""The house rules of the package, checked on its source: no import cycles (lazy imports
inside functions included), no module imports another's ``_private`` names, no module past
450 lines, and the tests mirror the package (``ssl_crops/a/b.py`` -> ``tests/a/test_b.py``)."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "ssl_crops"
MAX_LINES = 450
NO_CODE = {"formats.py"}  # constants only: tested where they are used


def _modules():
    mods = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def _imports(mods):
    """``{module: [(imported module, names), ...]}`` for every import statement, at any depth."""
    found = {}
    for name, path in mods.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        found[name] = []
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found[name] += [(a.name, []) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                    if node.level else node.module
                for a in node.names:  # "from . import distributed": the submodule, not the package
                    sub = f"{base}.{a.name}"
                    found[name].append((sub, []) if sub in mods else (base, [a.name]))
    return found


def _owner(target, mods):
    while target not in mods and "." in target:
        target = target.rsplit(".", 1)[0]
    return target if target in mods else None


def test_no_import_cycles():
    mods = _modules()
    edges = {m: {o for t, _ in imps if (o := _owner(t, mods)) not in (None, m, "ssl_crops")}
             for m, imps in _imports(mods).items()}  # ssl_crops/__init__ only re-exports, lazily
    done, path = set(), []

    def visit(m):
        if m in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
        if m in done:
            return
        path.append(m)
        for n in sorted(edges[m]):
            visit(n)
        path.pop()
        done.add(m)

    for m in sorted(mods):
        visit(m)


def test_no_private_imports_across_modules():
    mods = _modules()
    private = [f"{m} imports {name} from {t}" for m, imps in _imports(mods).items() for t, names in imps
               for name in names if name.startswith("_") and not name.startswith("__") and _owner(t, mods)]
    assert not private, private


def test_no_module_past_the_limit():
    long = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_tests_mirror_the_package():
    tests = PKG.parent / "tests"
    missing = [str(Path("tests", p.parent.relative_to(PKG), f"test_{p.name}")) for p in sorted(PKG.rglob("*.py"))
               if p.stem not in ("__init__", "__main__") and str(p.relative_to(PKG)) not in NO_CODE
               and not (tests / p.parent.relative_to(PKG) / f"test_{p.name}").is_file()]
    assert not missing, f"modules without their test file: {missing}"
