"""YAML settings files validated through pydantic models, with one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from steerlab.errors import ConfigError
from steerlab.fileio import read_text, shipped

M = TypeVar("M", bound=BaseModel)


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: key {key!r} is given twice; keep one")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def safe_load(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def load_yaml(path: Path, model: type[M], what: str, overrides: dict[str, Any] | None = None) -> M:
    """Read ``path`` into ``model``; ``overrides`` (None values skipped) replace keys of the file.

    Every problem (missing file, bad YAML, a field that does not validate) is a ConfigError of one
    line naming the file and the field.
    """
    path = shipped(Path(path))
    text = read_text(path, what)
    try:
        try:
            data = safe_load(text) or {}
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
        data.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return model.model_validate(data)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"{path}: {'.'.join(map(str, err['loc'])) or 'settings'}: {err['msg']}") from None
