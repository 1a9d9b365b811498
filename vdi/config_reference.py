"""Render the configuration reference (docs/configuration.md) from the schema itself."""

from __future__ import annotations

import typing

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from vdi.config import Config

INTRO = """# Configuration reference

One TOML file, given with `vdi --config FILE` (default `/etc/smartwork-vdi/vdi.toml`, or `$VDI_CONFIG`).
It is validated when any command starts; an invalid file stops the command with exit status 2 and a
message naming each bad key, e.g. `broker.port: Input should be less than or equal to 65535`.
Relative paths are relative to the file. `etc/demo.toml` is a complete example.

This page is generated from the schema (`python -m vdi.config_reference > docs/configuration.md`);
a test keeps it in step.
"""


def _type_name(annotation) -> str:
    origin = typing.get_origin(annotation)
    if origin is None:
        return getattr(annotation, "__name__", str(annotation))
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    inner = ", ".join(_type_name(a) for a in args)
    if origin is list:
        return f"list of {inner}"
    return inner + (" (optional)" if len(args) < len(typing.get_args(annotation)) else "")


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        return "" if isinstance(value, BaseModel) else f"`{value!r}`"
    if field.default is PydanticUndefined:
        return "**required**"
    if field.default is None:
        return "unset"
    return f"`{field.default}`"


def _constraints(field: FieldInfo) -> str:
    parts = []
    for item in field.metadata:
        for name in ("ge", "gt", "le", "lt", "min_length", "max_length", "pattern"):
            value = getattr(item, name, None)
            if value is not None:
                parts.append(f"{name} {value}")
    return ", ".join(parts)


def _section(title: str, model: type[BaseModel], lines: list[str]) -> None:
    lines += [
        "",
        f"## `{title}`",
        "",
        "| key | type | default | constraints | meaning |",
        "|---|---|---|---|---|",
    ]
    for name, field in model.model_fields.items():
        cells = [f"`{name}`", _type_name(field.annotation), _default(field), _constraints(field)]
        cells.append(field.description or "")
        # A pipe inside a cell (regex alternatives) would end the Markdown cell.
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")


def render() -> str:
    lines = [INTRO.rstrip()]
    for name, field in Config.model_fields.items():
        annotation = field.annotation
        if typing.get_origin(annotation) is list:
            _section(f"[[{name}]]", typing.get_args(annotation)[0], lines)
        else:
            _section(f"[{name}]", annotation, lines)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
