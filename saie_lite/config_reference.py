"""The config schema, read back for people: what ``saie-lite config`` prints and what
``docs/config.md`` is generated from. Everything here comes from the dataclasses in
``config.py`` (type, default, allowed values, help), so the reference cannot drift.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from saie_lite import config as config_mod
from saie_lite.errors import UserError


@dataclass(frozen=True)
class Key:
    name: str  # dotted: "learner.lora_r"
    type: str
    default: Any
    choices: tuple[str, ...]
    help: str
    usual: tuple[float, float] | None = None


def _type_name(value: Any) -> str:
    for kind, name in ((bool, "bool"), (int, "int"), (float, "float"), (str, "str")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def keys() -> list[Key]:
    """Every key of the schema, section by section, in the order the dataclasses declare."""
    out = []
    cfg = config_mod.Config()
    for section in dataclasses.fields(cfg):
        sub = getattr(cfg, section.name)
        for f in dataclasses.fields(sub):
            default = getattr(sub, f.name)
            out.append(
                Key(
                    f"{section.name}.{f.name}",
                    _type_name(default),
                    default,
                    tuple(f.metadata.get("choices", ())),
                    f.metadata.get("help", ""),
                    f.metadata.get("usual"),
                )
            )
    return out


def sections() -> list[str]:
    return [f.name for f in dataclasses.fields(config_mod.Config)]


def select(what: str | None) -> list[Key]:
    """All keys, one section's (``learner``) or one key (``learner.lora_r``)."""
    every = keys()
    if not what:
        return every
    chosen = [k for k in every if k.name == what or k.name.split(".")[0] == what]
    if not chosen:
        close = [k.name for k in every if what.split(".")[-1] in k.name][:5]
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(
            f"config has no section or key {what!r}{hint} (sections: {', '.join(sections())})"
        )
    return chosen


def shown(value: Any) -> str:
    """A value as it would be written in a recipe."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == "":
        return '""'
    return str(value)


def describe(key: Key) -> str:
    """One key, several lines: what ``saie-lite config learner.lora_r`` prints."""
    lines = [key.name, f"  type:    {key.type}", f"  default: {shown(key.default)}"]
    if key.choices:
        lines.append(f"  allowed: {' | '.join(key.choices)}")
    if key.usual:
        lines.append(f"  usual:   {key.usual[0]:g} to {key.usual[1]:g} (outside it: a warning)")
    lines.append(f"  {key.help}")
    section, name = key.name.split(".")
    lines.append(f"  set it:  --set {key.name}=VALUE, or in a recipe: {section}: {{{name}: VALUE}}")
    return "\n".join(lines)


def table(chosen: list[Key], values: dict[str, Any] | None = None) -> str:
    """Keys as aligned lines. With ``values`` (an effective config), each line shows the
    value in force and marks with ``*`` those that differ from the default."""
    width = max(len(k.name) for k in chosen)
    lines = []
    section = None
    for k in chosen:
        sec = k.name.split(".")[0]
        if sec != section:
            if section is not None:
                lines.append("")
            lines.append(f"[{sec}]")
            section = sec
        if values is None:
            allowed = f" ({' | '.join(k.choices)})" if k.choices else ""
            lines.append(f"  {k.name:<{width}}  {k.type:<5}  {shown(k.default)}{allowed}")
            lines.append(f"  {'':<{width}}  {k.help}")
        else:
            value = values[k.name]
            mark = "*" if value != k.default else " "
            extra = f"   (default {shown(k.default)})" if mark == "*" else ""
            lines.append(f"{mark} {k.name:<{width}}  {shown(value)}{extra}")
    return "\n".join(lines)


def markdown() -> str:
    """``docs/config.md``: every key with its type, default, allowed values and help."""
    out = [
        "# Config reference",
        "",
        "<!-- Generated from saie_lite/config.py by `saie-lite config --markdown`; "
        "edit the schema, not this page. -->",
        "",
        "Every key can be set in a YAML recipe (`section: {key: value}`) or on the command",
        "line with `--set section.key=value`. `saie-lite config KEY` prints one key;",
        "`saie-lite config --recipe R` prints the effective config of a recipe, marking what",
        "differs from the default.",
        "",
    ]
    by_section: dict[str, list[Key]] = {}
    for k in keys():
        by_section.setdefault(k.name.split(".")[0], []).append(k)
    for sec, ks in by_section.items():
        out += [f"## `{sec}`", "", "| key | type | default | allowed | what it does |"]
        out.append("|---|---|---|---|---|")
        for k in ks:
            allowed = " \\| ".join(f"`{c}`" for c in k.choices) if k.choices else ""
            help_ = k.help.replace("|", "\\|")
            default = shown(k.default).replace("|", "\\|")
            out.append(f"| `{k.name}` | {k.type} | `{default}` | {allowed} | {help_} |")
        out.append("")
    return "\n".join(out)
