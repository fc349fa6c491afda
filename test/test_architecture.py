"""The layout's rules, checked on the source: arrows one way, no cycles, no hidden imports, no ROS in the core."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "kltrace_ros"
# Imported inside functions on purpose: optional or heavy dependencies, used by one command or option only.
LAZY_OK = {"matplotlib.figure", "skimage", "ament_index_python.packages", "kltrace_ros.io.foxglove",
           "kltrace_ros.io.bag", "kltrace_ros.ros.demo", "kltrace_ros.ros.soak", "ray", "kltrace_ros.batch.jobs", "kltrace_ros.batch.bench",
           "kltrace_ros.batch.ray_pool", "kltrace_ros.models.diffusion.svd", "kltrace_ros.models.diffusion.cosmos"}
# Which folders (or modules) each folder may import: the arrows of the README's architecture section.
ALLOWED = {
    "tracing": {"tracing"},
    "models": {"models", "tracing.ops"},       # predictors share the leaf (KL map), never the engine
    "tracking": {"tracking", "tracing", "models"},
    "io": {"io", "tracking.tracker", "tracking.depth"},   # track records, their 3D (RGB-D bags)
    "training": {"training", "models", "tracing.ops", "io"},
    "eval": {"eval", "models", "tracing", "tracking", "io"},
    "batch": {"batch", "tracking", "io"},
    "cli": {"cli", "models", "tracing", "tracking", "io", "eval", "training", "batch"},
    "ros": {"ros", "models", "tracing", "tracking", "io", "msg"},
}


def modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        yield "kltrace_ros" + "".join("." + p for p in parts), path


def imports(name, path):
    """(module-level imports, function-level imports) as absolute names."""
    tree = ast.parse(path.read_text())
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    top, lazy = set(), set()

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            targets = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(pkg.split(".")[: len(pkg.split(".")) - child.level + 1] + ([base] if base else []))
                targets = [base]
            (lazy if inner else top).update(targets)
            visit(child, inner)

    visit(tree, False)
    return top, lazy


GRAPH = {name: imports(name, path) for name, path in modules()}


def test_no_ros_below_ros():
    for name, (top, lazy) in GRAPH.items():
        if name.startswith(("kltrace_ros.ros", "kltrace_ros.cli")):
            continue
        assert not {m for m in top | lazy if m.split(".")[0] == "rclpy" or m.startswith("kltrace_ros.ros")}, name


def test_function_level_imports_are_only_optional_dependencies():
    for name, (_, lazy) in GRAPH.items():
        assert lazy <= LAZY_OK, f"{name} imports {sorted(lazy - LAZY_OK)} inside a function"


def test_arrows_run_one_way():
    for name, (top, _) in GRAPH.items():
        parts = name.split(".")
        if len(parts) < 3:
            continue
        allowed = ALLOWED[parts[1]]
        for m in top:
            if m.startswith("kltrace_ros.") and m.count(".") >= 1:
                inner = m[len("kltrace_ros."):]
                assert any(inner == a or inner.startswith(a + ".") for a in allowed), f"{name} -> {m}"


def test_no_import_cycles():
    internal = {n: {m for m in top if m in GRAPH} for n, (top, _) in GRAPH.items()}
    # a module's import of a name inside a package also runs that package's __init__: count the parents
    for n, deps in internal.items():
        for m in list(deps):
            parts = m.split(".")
            deps.update(".".join(parts[:k]) for k in range(2, len(parts)) if ".".join(parts[:k]) in GRAPH)
    state = {}

    def dfs(n, stack):
        state[n] = 1
        for m in internal[n]:
            if m == n:
                continue
            if state.get(m) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack + [n, m]))
            if m not in state:
                dfs(m, stack + [n])
        state[n] = 2

    for n in internal:
        if n not in state:
            dfs(n, [])
