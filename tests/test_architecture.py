"""The package's structure: its import graph (read from the code) has no cycle, interfaces do not import their
implementations, and functions stay short."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "mmsent"
MAX_FUNCTION_LINES = 50
LONG_REASON = "# long:"  # a comment on the line above a function that says why it is longer


def module_name(path: Path) -> str:
    parts = ("mmsent", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports, anywhere in it (inside functions too), except under TYPE_CHECKING."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            submodules = {f"{base}.{alias.name}" for alias in node.names} & modules
            found.update(submodules)
            if len(submodules) < len(node.names):  # names defined in ``base`` itself
                found.add(base)
    return {name for name in found if name in modules} - {module_name(path)}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {name: imports_of(path, modules) for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (the first repeated at the end), or None."""
    state: dict[str, str] = {}  # "open" while on the path, "done" after

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target, path + [target])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_import_graph_is_read_from_the_code():
    graph = import_graph()
    assert "mmsent.runfolder" in graph["mmsent.cv"]  # a top-level import
    assert "mmsent.explain" in graph["mmsent.prediction"]  # an import inside a method counts too
    assert "mmsent.encoders.base" in graph["mmsent.encoders.text"]  # a relative import two levels up


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("interface, implementations", [
    ("mmsent.encoders.base", ("mmsent.encoders.",)),  # the encoder interface
    ("mmsent.runfolder", ("mmsent.cv", "mmsent.predict", "mmsent.ensemble", "mmsent.report")),
    ("mmsent.stacking", ("mmsent.runfolder", "mmsent.cv", "mmsent.predict", "mmsent.ensemble")),  # numerics only
    ("mmsent.calibration", ("mmsent.runfolder", "mmsent.cv", "mmsent.predict", "mmsent.refit", "mmsent.ensemble",
                            "mmsent.data")),  # the maths only: runs are recalibrated by mmsent.refit
    ("mmsent.decision", ("mmsent.runfolder", "mmsent.cv", "mmsent.predict", "mmsent.refit", "mmsent.ensemble")),
    ("mmsent.paths", ("mmsent.",)),  # a leaf
    ("mmsent.atomic", ("mmsent.",)),
    ("mmsent.registry", ("mmsent.encoders", "mmsent.data", "mmsent.fusion", "mmsent.losses", "mmsent.model",
                         "mmsent.profiles")),  # names its providers, imports none of them
    ("mmsent.testing", ("mmsent.encoders.text", "mmsent.encoders.image", "mmsent.encoders.scratch",
                        "mmsent.encoders.lexicon", "mmsent.encoders.image_text", "mmsent.model")),  # via registries
])
def test_an_interface_imports_none_of_its_users(interface, implementations):
    imported = import_graph()[interface]
    assert not [m for m in imported if m.startswith(implementations)], imported


def test_no_library_module_imports_the_command_line():
    """Library first: the CLI parses and prints what the library decides; nothing but ``python -m mmsent`` uses it."""
    assert [name for name, imported in import_graph().items() if "mmsent.cli" in imported] == ["mmsent.__main__"]


def test_the_estimator_trains_and_predicts_only_through_the_library_functions():
    """SentimentClassifier trains through ``mmsent.api.train`` (as ``mmsent train`` does) and predicts through
    ``load_run``: it reaches no training or inference loop of its own."""
    imported = import_graph()["mmsent.estimator"]
    assert "mmsent.api" in imported
    assert not imported & {"mmsent.cv", "mmsent.seeds", "mmsent.training", "mmsent.predict", "mmsent.features"}


PREDICTION_SIDE = ("mmsent.predict", "mmsent.predict_table", "mmsent.prediction", "mmsent.portable", "mmsent.export",
                   "mmsent.explain", "mmsent.serve", "mmsent.evaluation", "mmsent.ensemble", "mmsent.stacking")


def test_prediction_reaches_the_inference_loop_not_the_training_loop():
    """The inference loop (``predict_probs``, ``FeatureBatches``) lives in ``mmsent.inference``, which the training
    loop imports and which imports no training: predicting never imports ``mmsent.training``."""
    graph = import_graph()
    assert "mmsent.training" not in graph["mmsent.inference"]
    assert "mmsent.inference" in graph["mmsent.training"]
    assert [name for name in PREDICTION_SIDE if "mmsent.training" in graph[name]] == []


def test_run_summaries_are_apart_from_cross_validation():
    """A run's summary figures and their printing (``mmsent.summaries``) read metrics only: no run folder, no
    training; reporting and ensembling import them there, not from ``mmsent.cv``."""
    graph = import_graph()
    assert not graph["mmsent.summaries"] & {"mmsent.cv", "mmsent.runfolder", "mmsent.training", "mmsent.inference"}
    assert [name for name in ("mmsent.ensemble", "mmsent.report", "mmsent.export") if "mmsent.cv" in graph[name]] == []


def test_a_finished_run_is_refitted_in_one_place():
    """Recalibrating a finished run and fitting its decision rule again rebuild its scored folds the same way, in
    ``mmsent.refit``; cross-validation does not import it (nor it cross-validation)."""
    graph = import_graph()
    assert "mmsent.cv" not in graph["mmsent.refit"] and "mmsent.refit" not in graph["mmsent.cv"]
    assert [name for name, imported in graph.items() if "mmsent.refit" in imported] == ["mmsent.cli"]


GENERIC_OF_LABELS = ("metrics.py", "losses.py", "data/posts.py", "data/formats.py", "data/folder.py", "data/table.py",
                     "data/dataset.py", "data/folds.py", "data/check.py", "data/convert.py", "data/text.py",
                     "data/images.py")


@pytest.mark.parametrize("module", GENERIC_OF_LABELS)
def test_generic_functions_take_the_class_set_explicitly(module):
    """The three MVSA polarities (``config.LABELS``) are the label set of a run saved without one and of the MVSA
    releases, never a silent default: metrics, losses and the generic data modules are given the run's labels."""
    tree = ast.parse((PACKAGE / module).read_text(encoding="utf-8"))
    named = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    named |= {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
              for alias in node.names}
    assert "LABELS" not in named


def test_one_set_of_data_nouns():
    """Every format reads into posts (``data.posts.Post``) and a part of a data set is opened by ``open_data``:
    no second record type or opener of label files beside them."""
    defined = {node.name for path in PACKAGE.rglob("*.py") for node in ast.walk(ast.parse(path.read_text("utf-8")))
               if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    assert {"Post", "open_data"} <= defined
    assert not defined & {"Record", "LabelFile", "read_label_file", "open_split"}


def test_load_run_is_one_function():
    """``mmsent.load_run`` (a run, an ensemble or an exported model) is the only function of that name: the one
    that loads a run folder with PyTorch is ``mmsent.predict.load_run_folder``."""
    defined = [module_name(path) for path in PACKAGE.rglob("*.py")
               for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
               if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "load_run"]
    assert defined == ["mmsent"]


def test_functions_are_short_or_say_why():
    long = []
    for path in PACKAGE.rglob("*.py"):
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                size = node.end_lineno - node.lineno + 1
                if size > MAX_FUNCTION_LINES and not lines[first - 2].strip().startswith(LONG_REASON):
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({size} lines)")
    assert not long, "functions over 50 lines without a '# long: reason' comment above them: " + ", ".join(long)


def test_the_architecture_page_names_every_module():
    page = (PACKAGE.parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = page[page.index("## Modules"):page.index("## Tests and benchmarks")]
    table = section[section.index("| module |"):section.index("register by name")]
    named = set(re.findall(r"`([\w/]+\.py)`", table))
    modules = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")} - {"data/__init__.py", "encoders/__init__.py"}
    assert modules - named == set(), "modules missing from the module table of docs/architecture.md"
    assert named - modules == set(), "the module table of docs/architecture.md names modules that do not exist"


def test_registries_load_their_own_plugins():
    """A registry imports the modules that fill it (mmsent.registry): nothing else loads plugins beforehand, and
    the only callers of ``load_plugins`` are the places that report a missing PyTorch early (the CLI, load_run and
    the training API)."""
    callers = []
    for path in [*PACKAGE.rglob("*.py"), *(PACKAGE.parents[1] / "tests").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and "load_plugins" in ast.unparse(node.func):
                callers.append(path.name)
    assert sorted(callers) == ["__init__.py", "api.py", "cli.py"], callers
