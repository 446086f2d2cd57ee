"""YAML settings files validated through pydantic models, with one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from steerlab.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def load_yaml(path: Path, model: type[M], what: str, overrides: dict[str, Any] | None = None) -> M:
    """Read ``path`` into ``model``; ``overrides`` (None values skipped) replace keys of the file.

    Every problem (missing file, bad YAML, a field that does not validate) is a ConfigError of one
    line naming the file and the field.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
        data.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return model.model_validate(data)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"{path}: {'.'.join(map(str, err['loc'])) or 'settings'}: {err['msg']}") from None
