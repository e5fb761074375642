"""Layering rules the package relies on: inference never imports training; one module owns the run files."""

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
