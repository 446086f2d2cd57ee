"""Small parsing helpers of the command lines (``steerlab`` and ``sdf``): lists of layers and
integers, and pydantic settings built from options. They import nothing else of the CLI."""

from __future__ import annotations

from typing import Any

from steerlab.errors import ConfigError


def parse_layers(spec: str | None, n_layers: int | None = None, option: str = "--layers") -> list[int] | None:
    """``"3,5,10-12"`` -> ``[3, 5, 10, 11, 12]``; ``None`` -> every layer (:func:`steerlab.generate.parse_layers`)."""
    from steerlab.generate import parse_layers as parse

    return parse(spec, n_layers, option)


def parse_ints(spec: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{what} {spec!r} is not a comma-separated list of integers") from None
    if not values:
        raise ConfigError(f"{what} needs at least one value")
    return values


def validated(schema: Any, **data: Any) -> Any:
    """Build a pydantic settings model from CLI options; a bad value is one line, exit 2."""
    from pydantic import ValidationError

    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        e = exc.errors()[0]
        raise ConfigError(f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}") from None
