"""Edit params.yaml in place: apply `--set` overrides or a profile overlay, comments kept.

The result is validated before anything is written, so a bad value never reaches params.yaml.
"""

from __future__ import annotations

import io
from pathlib import Path

from ruamel.yaml import YAML

from gptpipe.config import PARAMS, deep_merge, parse_set, read_yaml, validate
from gptpipe.errors import UserError
from gptpipe.io import atomic_write

PROFILES = Path("profiles")


def _yaml() -> YAML:
    y = YAML()
    y.preserve_quotes = True
    y.width = 4096  # long flow lists stay on one line
    y.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    return y


def _merge_into(node, over: dict) -> None:
    """Merge `over` into a ruamel mapping in place, so untouched keys keep their comments."""
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(node.get(k), dict):
            _merge_into(node[k], v)
        else:
            node[k] = v


def update(over: dict, path: str | Path = PARAMS) -> None:
    path = Path(path)
    validate(deep_merge(read_yaml(path), over), f"{path} with your changes")  # raises before writing
    y = _yaml()
    doc = y.load(path.read_text())
    _merge_into(doc, over)
    buf = io.StringIO()
    y.dump(doc, buf)
    atomic_write(path, buf.getvalue())


def set_values(assignments: list[str], path: str | Path = PARAMS) -> None:
    update(parse_set(assignments), path)


def use(name: str, path: str | Path = PARAMS) -> Path:
    overlay = PROFILES / f"{name}.yaml"
    if not overlay.exists():
        known = sorted(p.stem for p in PROFILES.glob("*.yaml")) if PROFILES.exists() else []
        raise UserError(f"profile {name!r} not found ({overlay}); known profiles: {', '.join(known) or 'none'}")
    update(read_yaml(overlay), path)
    return overlay
