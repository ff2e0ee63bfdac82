"""The package's layer map (docs/architecture.md): no import of a higher layer, no circles."""

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "dcls_audio"

# lowest first; a module may import its own layer's modules and any lower layer's
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "base",
        (
            "dcls_audio", "dcls_audio.runfiles", "dcls_audio.config", "dcls_audio.lockfile",
            "dcls_audio.workers",
        ),
    ),
    ("dcls", ("dcls_audio.dcls",)),
    ("data", ("dcls_audio.data",)),
    ("models", ("dcls_audio.models",)),
    ("datasets", ("dcls_audio.datasets",)),
    ("train", ("dcls_audio.train",)),
    (
        "commands",
        (
            "dcls_audio.aggregate", "dcls_audio.benchmarks", "dcls_audio.demo",
            "dcls_audio.evaluate", "dcls_audio.events", "dcls_audio.export",
            "dcls_audio.gpu_check", "dcls_audio.plot", "dcls_audio.results",
            "dcls_audio.selfcheck", "dcls_audio.tag", "dcls_audio.tagger", "dcls_audio.teacher",
            "dcls_audio.timeline", "dcls_audio.timeline_eval", "dcls_audio.timeline_out",
        ),
    ),
]  # fmt: skip


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int | None:
    best = None
    for level, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            hit = module == p or (p != "dcls_audio" and module.startswith(p + "."))
            if hit and (best is None or len(p) > best[1]):
                best = (level, len(p))
    return None if best is None else best[0]


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "configs" in path.relative_to(PACKAGE).parts:
            continue
        found[module_name(path)] = path
    return found


def imports(module: str, path: Path, known: set[str]) -> set[str]:
    """dcls_audio modules that ``module`` imports (anywhere in the file), resolved to modules."""
    pkg = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            names = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        out |= {n for n in names if n.split(".")[0] == "dcls_audio" and n != module}
    return {n if n in known else n.rsplit(".", 1)[0] for n in out}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(m, p, set(mods)) for m, p in mods.items()}


def test_every_module_has_a_layer():
    assert [m for m in modules() if layer_of(m) is None] == []


def test_no_module_imports_a_higher_layer():
    wrong = [
        f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
        for m, deps in graph().items()
        for d in deps
        if layer_of(d) > layer_of(m)
    ]
    assert wrong == []


def test_no_import_circles():
    g = graph()
    # a package's __init__ re-exports its own modules: edges into the package itself are not circles
    edges = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in g.items()}
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert circles == []


def test_the_checker_sees_a_back_edge_and_a_circle(tmp_path):
    assert layer_of("dcls_audio.data.hdf5") < layer_of("dcls_audio.train.loop")
    assert layer_of("dcls_audio.runfiles") == 0 and layer_of("dcls_audio.nonesuch") is None
    a = tmp_path / "dcls_audio" / "x.py"
    a.parent.mkdir()
    a.write_text("from .y import f\nimport dcls_audio.train.loop\n")
    known = {"dcls_audio.x", "dcls_audio.y", "dcls_audio.train.loop"}
    got = imports("dcls_audio.x", a, known)
    assert got == {"dcls_audio.y", "dcls_audio.train.loop"}


def test_the_architecture_page_lists_every_module():
    page = (ROOT / "docs" / "architecture.md").read_text()
    missing = [
        str(p.relative_to(PACKAGE))
        for p in modules().values()
        if p.name != "__init__.py" and p.name != "__main__.py"
        and f"`{p.relative_to(PACKAGE)}`" not in page
    ]  # fmt: skip
    assert missing == [], "add these to docs/architecture.md (one line each)"
