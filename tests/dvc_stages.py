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
