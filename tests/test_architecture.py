"""Layering rules the package relies on: no import circles, nothing imports upward (data below predict below train,
config below the model families), inference never imports training; one module owns the run files."""

import ast
from pathlib import Path

KIT = Path(__file__).parent.parent / "kit"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_predict_never_imports_train():
    offenders = {
        str(p.relative_to(KIT)): sorted(n for n in _imports(p) if n == "kit.train" or n.startswith("kit.train."))
        for p in (KIT / "predict").rglob("*.py")
    }
    assert {p: names for p, names in offenders.items() if names} == {}
    assert list((KIT / "predict").rglob("*.py")), "kit/predict is empty"


def _module_name(path: Path) -> str:
    parts = path.relative_to(KIT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _executed_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: module level and inside functions, not under ``if TYPE_CHECKING:``."""
    found, stack = [], [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        children = node.orelse if _is_type_checking(node) else list(ast.iter_child_nodes(node))
        stack.extend(children)
    return found


def _kit_imports(path: Path, modules: set[str], name: str | None = None) -> set[str]:
    """The kit modules that ``path`` (module ``name``) imports: relative names resolved, ``from kit.x import y`` as
    ``kit.x.y`` when ``y`` is a submodule (and as ``kit.x`` when a name is not), each cut back to a kit module."""
    name = name or _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in _executed_imports(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
            continue
        base = node.module or ""
        if node.level:
            parent = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(parent + ([node.module] if node.module else []))
        submodules = {f"{base}.{alias.name}" for alias in node.names} & modules
        targets |= submodules
        if len(submodules) < len(node.names):
            targets.add(base)
    resolved = set()
    for target in targets:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            resolved.add(target)
    return resolved


def import_graph() -> dict[str, set[str]]:
    """Module -> the kit modules it imports, for every module of the package."""
    paths = {_module_name(p): p for p in KIT.rglob("*.py")}
    return {name: _kit_imports(path, set(paths)) for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 50 and graph["kit.train.fold"], "the import graph is missing modules or edges"
    cycle = find_cycle(graph)
    assert cycle is None, "import circle (function-level imports count): " + " -> ".join(cycle or ())


def test_cycle_finder_sees_function_level_and_relative_imports(tmp_path):
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import kit.train\n"
        "def f():\n    from kit.models import heatmap\n    from . import runs\n"
    )
    modules = {"kit", "kit.models", "kit.models.heatmap", "kit.runs", "kit.train", "kit.m"}
    # Read as kit/m.py: the relative import resolves against the kit package; the TYPE_CHECKING one is left out.
    assert _kit_imports(source, modules, name="kit.m") == {"kit.models.heatmap", "kit.runs"}


def _layer_offenders(folder: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    graph = import_graph()
    prefix = "kit." + folder.replace("/", ".").removesuffix(".py")
    offenders = {
        module: sorted(t for t in targets if any(t == f or t.startswith(f + ".") for f in forbidden))
        for module, targets in graph.items()
        if module == prefix or module.startswith(prefix + ".")
    }
    return {module: names for module, names in offenders.items() if names}


def test_data_imports_neither_predict_nor_train():
    assert _layer_offenders("data", ("kit.predict", "kit.train")) == {}


def test_config_never_imports_the_model_families():
    assert _layer_offenders("config.py", ("kit.models",)) == {}


def test_run_record_files_are_named_only_by_kit_runs():
    for name in ("metrics.json", "done.json"):
        users = sorted(str(p.relative_to(KIT)) for p in KIT.rglob("*.py") if name in p.read_text())
        assert users == ["runs.py"], name


def test_model_families_are_not_named_outside_their_modules():
    from kit.models import list_families

    for family in list_families():
        own = KIT / "models" / f"{family}.py"
        checks = [f'family == "{family}"', f"family == '{family}'", f'family != "{family}"']
        users = sorted(
            str(p.relative_to(KIT))
            for p in KIT.rglob("*.py")
            if p != own and any(check in p.read_text() for check in checks)
        )
        assert users == [], family


def test_ensemble_record_keys_are_spelled_only_in_kit_ensemble():
    """A blend's or stack's NAME.json and NAME.npz are read through ``kit.ensemble.record``: no other module spells
    their keys (its distinctive field names, the sidecar's arrays and name)."""
    from kit.ensemble import record

    models = [record.BlendRecord, record.StackRecord, record.DataRecord, record.Member, record.BestBlend]
    models += [record.RidgeInfo, record.ShapeInfo, record.StackFoldModel, record.ArraysFile]
    shared = {"oof_mse", "oof_nme", "oof_failure_rate", "failure_rate", "nme_points", "fold_mse"}  # runs' keys too
    fields = {name for model in models for name in model.model_fields if "_" in name} - shared
    assert {"per_point_weights", "fold_models", "blend_mse", "stack_mse", "submission_sha256"} & fields
    literals = [f'"{name}"' for name in fields | {"per_point_weights", "fold_weights", "intercepts"}]
    literals += ['"all.', '.intercept"', '.theta"', 'with_suffix(".npz")']
    users = {
        str(p.relative_to(KIT)): sorted(text for text in literals if text in p.read_text())
        for p in KIT.rglob("*.py")
        if "ensemble" not in p.relative_to(KIT).parts
    }
    assert {path: found for path, found in users.items() if found} == {}
