"""dvc.yaml read as DVC reads it: each stage's params (per params file, with ${profile}
resolved) and the files it declares it writes. Shared by the static test and the end-to-end ones."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def stages(root: Path = ROOT) -> dict:
    return yaml.safe_load((root / "dvc.yaml").read_text())["stages"]


def declared_params(stage: dict, profile: str) -> dict[str, list[str]]:
    """params file -> the keys the stage declares from it (an empty list: the whole file)."""
    out: dict[str, list[str]] = {}
    for entry in stage.get("params", []):
        if isinstance(entry, str):
            out.setdefault("params.yaml", []).append(entry)
        else:
            for file, keys in entry.items():
                out.setdefault(file.replace("${profile}", profile), []).extend(keys or [])
    return out


def written(stage: dict) -> list[str]:
    """Every out, metric and plot path the stage declares."""
    paths = []
    for kind in ("outs", "metrics", "plots"):
        for entry in stage.get(kind, []):
            paths.append(entry if isinstance(entry, str) else next(iter(entry)))
    return paths


def has_key(tree: dict, dotted: str) -> bool:
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def script_of(stage: dict) -> list[str]:
    """The repo files a stage's cmd runs: its pipelines/ script and, through ``python -m``, a module."""
    import re

    cmd = stage["cmd"]
    files = re.findall(r"(pipelines/\w+\.py)", cmd)
    files += [f"src/{m.replace('.', '/')}.py" for m in re.findall(r"python -m (vlv[\w.]*)", cmd)]
    return files


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """``vlv.x`` -> src/vlv/x.py or src/vlv/x/__init__.py; None for modules outside the project."""
    if name != "vlv" and not name.startswith("vlv."):
        return None
    base = root / "src" / name.replace(".", "/")
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def imports_of(file: Path, root: Path = ROOT) -> set[Path]:
    """The project modules ``file`` imports anywhere in it (lazy imports inside functions too)."""
    import ast

    tree = ast.parse(file.read_text())
    pkg = ".".join(file.relative_to(root / "src").with_suffix("").parts[:-1]) if file.is_relative_to(root / "src") else ""
    if file.name == "__init__.py" and pkg:
        pkg = ".".join(file.relative_to(root / "src").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names.add(base)
            names |= {f"{base}.{a.name}" for a in node.names}  # `from vlv import world` imports a module
    found = {module_file(n, root) for n in names}
    parents = {module_file(".".join(n.split(".")[:i]), root) for n in names for i in range(1, n.count(".") + 1)}
    return {f for f in found | parents if f is not None}


def import_closure(files: list[str], root: Path = ROOT) -> set[str]:
    """Every project file the given scripts import, transitively (repo-relative paths)."""
    todo = [root / f for f in files]
    seen: set[Path] = set()
    while todo:
        f = todo.pop()
        if f in seen or not f.is_file():
            continue
        seen.add(f)
        todo += list(imports_of(f, root))
    return {str(f.relative_to(root)) for f in seen}
