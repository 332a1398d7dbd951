"""The layout rules of core/ (docs/ENGINE.md): no QGIS, no import circle, no module reading another's private
names. Read from the source (ast), so a rule broken anywhere fails here, whatever the tests import."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = os.path.join(ROOT, "rsgen_qgis", "core")


def _modules():
    out = {}
    for r, _, fs in os.walk(CORE):
        for f in fs:
            if f.endswith(".py"):
                path = os.path.join(r, f)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                name = rel[:-len(".__init__")] if rel.endswith(".__init__") else rel
                with open(path, encoding="utf-8") as fh:
                    out[name] = (path, ast.parse(fh.read()))
    return out


def _resolve(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(mods, top_level_only: bool):
    """module -> set of (imported module, [names]) for imports of rsgen_qgis modules."""
    edges = {}
    for name, (path, tree) in mods.items():
        is_pkg = path.endswith("__init__.py")
        nodes = tree.body if top_level_only else list(ast.walk(tree))
        found = []
        for node in nodes:
            if isinstance(node, ast.ImportFrom):
                target = _resolve(name, is_pkg, node)
                names = [a.name for a in node.names]
                subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in mods]
                found += [(s, []) for s in subs] or [(target, names)]
            elif isinstance(node, ast.Import):
                found += [(a.name, []) for a in node.names]
        edges[name] = found
    return edges


def test_core_imports_no_qgis():
    for name, found in _imports(_modules(), top_level_only=False).items():
        bad = [t for t, _ in found if t.split(".")[0] in ("qgis", "PyQt5", "PyQt6", "torch")]
        assert not bad, f"{name} imports {bad}: core/ must run without QGIS and torch"


def test_no_private_names_across_modules():
    mods = _modules()
    for name, found in _imports(mods, top_level_only=False).items():
        for target, names in found:
            if target.startswith("rsgen_qgis") and target != name:
                private = [n for n in names if n.startswith("_") and n != "__version__"]
                assert not private, f"{name} imports private names {private} from {target}"


def test_no_import_circle_at_import_time():
    mods = _modules()
    graph = {n: {t for t, _ in found if t in mods and t != n}
             for n, found in _imports(mods, top_level_only=True).items()}
    # a package's __init__ importing its own submodules is not a circle through them
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                cycle = stack[stack.index(m):] + [m]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)


def test_the_engine_has_no_second_path():
    """The single-request and large-area paths run the shared loop; nothing in core/ branches to another
    sampler loop by model kind (the retired core/latent.py generate_latent, or a `kind == ...` test in the engine)."""
    mods = _modules()
    for name in ("rsgen_qgis.core.engine.single", "rsgen_qgis.core.engine.blocks"):
        src = ast.unparse(mods[name][1])
        assert "loop.run(" in src and ".decode(" in src, name
    for name, (path, tree) in mods.items():
        if ".engine." in name:
            src = ast.unparse(tree)
            assert "'latent'" not in src and "'pixel'" not in src, f"{name} branches on the package kind"
    assert "rsgen_qgis.core.engine.latent" not in mods
