"""The package's layout: every import, at the top of a module or inside a function, points down a layer, so the
modules form no cycle."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import heritagelens

PACKAGE = Path(heritagelens.__file__).parent


def module_name(file: Path, root: Path) -> str:
    parts = file.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(file: Path, root: Path, modules: set[str]) -> set[str]:
    """The package's modules that `file` imports anywhere in its code, relatively or absolutely. The package's own
    face (`__init__`) is left out: every module may read its version."""
    me = module_name(file, root)
    here = (me if file.name == "__init__.py" else me.rpartition(".")[0]).split(".")
    found = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            names = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n for n in names if n in modules}
    return found - {me, root.name}


def unresolved(root: Path = PACKAGE) -> list[str]:
    """Relative imports, anywhere in the package's code, of a module that does not exist (as 'file: .name')."""
    files = sorted(root.rglob("*.py"))
    modules = {module_name(f, root) for f in files}
    missing = []
    for f in files:
        me = module_name(f, root)
        here = (me if f.name == "__init__.py" else me.rpartition(".")[0]).split(".")
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level and node.module:
                target = ".".join(here[: len(here) - node.level + 1] + [node.module])
                if target not in modules:
                    missing.append(f"{f.name}: {'.' * node.level}{node.module}")
    return missing


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    files = sorted(root.rglob("*.py"))
    modules = {module_name(f, root) for f in files}
    return {module_name(f, root): imported(f, root, modules) for f in files}


def cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of `graph` (its first module repeated at the end), or [] when there is none."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as e:
        return list(e.args[1])
    return []


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert {"heritagelens.data.split", "heritagelens.train.runs", "heritagelens.jobs.pipeline"} <= set(graph)
    assert "heritagelens.train.runs" in graph["heritagelens.judging.judges"]  # a judge is a training run
    assert cycle(graph) == [], " -> ".join(cycle(graph))


def test_every_relative_import_names_a_module_that_exists():
    assert unresolved() == []  # inside a function it would fail only when that function runs


def test_only_the_faces_a_person_uses_and_the_jobs_import_the_jobs():
    graph = import_graph()
    jobs = {m for m in graph if m.startswith("heritagelens.jobs")}
    users = {m for m, deps in graph.items() if deps & jobs} - jobs
    assert users == {"heritagelens.cli", "heritagelens.webapp"}  # the web app: the Review tab's Learn button
    assert {d for d in graph["heritagelens.webapp"] if d in jobs} == {"heritagelens.jobs.learn"}


def test_every_error_the_tool_reports_shares_one_base():
    import importlib
    import inspect

    from heritagelens.errors import HeritageLensError

    errors = {}
    for name in set(import_graph()) - {"heritagelens.__main__"}:  # importing that one runs the command
        module = importlib.import_module(name)
        errors |= {n: c for n, c in inspect.getmembers(module, inspect.isclass) if n.endswith("Error")}
    ours = {n: c for n, c in errors.items() if c.__module__.startswith("heritagelens")}
    assert len(ours) >= 14 and all(issubclass(c, HeritageLensError) for c in ours.values()), ours


def test_the_check_finds_a_cycle_through_a_function_level_import(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("def f():\n    from pkg import c\n")
    (pkg / "c.py").write_text("from . import a\n")
    (pkg / "d.py").write_text("import pkg.a\n")
    graph = import_graph(pkg)
    assert graph["pkg.d"] == {"pkg.a"} and graph["pkg.b"] == {"pkg.c"}
    assert sorted(cycle(graph)[:-1]) == ["pkg.a", "pkg.b", "pkg.c"]
    del graph["pkg.c"]
    assert cycle(graph) == []
    (pkg / "e.py").write_text("def f():\n    from .gone import g\n")
    assert unresolved(pkg) == ["e.py: .gone"]


def test_the_readme_shows_the_screenshots_the_script_makes():
    """Every image the README shows exists; the screenshots are the ones `docs/screenshots.py` writes."""
    import re

    from PIL import Image

    root = Path(__file__).parents[1]
    readme = (root / "README.md").read_text()
    shown = set(re.findall(r'<img src="([^"]+)"', readme)) | set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme))
    for rel in shown:
        with Image.open(root / rel) as im:
            assert im.width >= 600, rel  # a screenshot or figure, not a placeholder
    made = set(re.findall(r'shoot\(page, a\.out, "([a-z-]+)"', (root / "docs" / "screenshots.py").read_text()))
    assert {f"docs/screenshots/{n}.png" for n in made} <= shown and len(made) == 5


def test_the_ties_that_pointed_up_a_layer_stay_cut():
    """Reading a model never needs the training loop, the split never needs the weights' reader, the study's page
    is drawn by the page helpers (not the run report), and the training's augmentation takes nothing from the
    class images' code."""
    graph = import_graph()
    never = {
        "heritagelens.model.checkpoint": "heritagelens.train.loop",
        "heritagelens.data.split": "heritagelens.model.checkpoint",
        "heritagelens.jobs.tune": "heritagelens.jobs.report",
        "heritagelens.train.loop": "heritagelens.dream",
    }
    ties = [f"{a} -> {b}" for a, b in never.items() if any(m == b or m.startswith(b + ".") for m in graph[a])]
    assert ties == []
    assert (
        "heritagelens.htmlpage" in graph["heritagelens.jobs.report"]
        and "heritagelens.htmlpage" in graph["heritagelens.jobs.tune"]
    )


LAYERS = [
    {"config", "errors", "files", "progress", "htmlpage", "distributed"},
    {"data"},
    {"model", "figures"},
    {"train"},
    {"explain", "dream", "sort", "judging"},
    {"jobs"},
    {"cli", "webapp", "__main__"},
]
"""The package's folders (and top-level modules), from the bottom up: shared ground, the photos, the model, its
training, the capabilities built on a trained model, the jobs that run them, and the faces a person uses."""
CAPABILITIES = LAYERS[4]


def place(module: str) -> str:
    """The folder (or top-level module) a module of the package sits in."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer(module: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if place(module) in names)


def upward(graph: dict[str, set[str]]) -> list[str]:
    """Imports of a higher layer, and imports from one capability folder into another (as 'module -> module')."""
    up = [f"{m} -> {d}" for m, deps in graph.items() if m != "heritagelens" for d in deps if layer(d) > layer(m)]
    across = [
        f"{m} -> {d}"
        for m, deps in graph.items()
        for d in deps
        if place(m) in CAPABILITIES and place(d) in CAPABILITIES and place(d) != place(m)
    ]
    return up + across


def test_every_folder_imports_only_its_own_layer_and_those_below():
    graph = import_graph()
    assert {place(m) for m in graph} - {""} <= set().union(*LAYERS)
    assert upward(graph) == []  # the deconvnet, the class images, the sort and the judges each stand alone too


def test_the_layer_rule_finds_a_model_that_imports_its_training_or_another_capability(tmp_path):
    pkg = tmp_path / "heritagelens"
    for folder in ("model", "train", "sort", "dream"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "train" / "loop.py").write_text("from ..model import net\n")
    (pkg / "model" / "net.py").write_text("def f():\n    from ..train.loop import x\n")
    (pkg / "dream" / "render.py").write_text("from ..model.net import f\n")
    graph = import_graph(pkg)
    assert sorted(upward(graph)) == ["heritagelens.model.net -> heritagelens.train.loop"]
    (pkg / "sort" / "sorter.py").write_text("from ..dream import render\n")
    across = set(upward(import_graph(pkg))) - {"heritagelens.model.net -> heritagelens.train.loop"}
    assert across == {
        "heritagelens.sort.sorter -> heritagelens.dream",
        "heritagelens.sort.sorter -> heritagelens.dream.render",
    }


def test_the_package_top_holds_its_shared_ground_and_faces_only():
    files = sorted(f.name for f in PACKAGE.iterdir() if f.is_file() and not f.name.startswith("."))
    assert len(files) <= 12, files
    folders = {f.name for f in PACKAGE.iterdir() if f.is_dir() and (f / "__init__.py").exists()}
    assert folders == {"data", "model", "train", "explain", "dream", "judging", "sort", "jobs"}
