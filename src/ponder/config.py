"""Config dataclasses: one per algorithm and trainer, each field with help text, validated in
``__post_init__``, loadable from YAML and overridable on the command line (``--field value``)."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from .errors import PonderError


def option(default: Any, help: str, **kw) -> Any:
    """A dataclass field that carries its help text (shown by ``ponder ... --help``)."""
    return dataclasses.field(default=default, metadata={"help": help, **kw})


def check_positive(cfg: Any, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is None or value <= 0:
            raise PonderError(f"--{name.replace('_', '-')} must be > 0, got {value}")


def check_literals(cfg: Any) -> None:
    """Validate every ``Literal[...]`` field of a config, with a clear error for anything else."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        if get_origin(hints[f.name]) is Literal:
            allowed = get_args(hints[f.name])
            if getattr(cfg, f.name) not in allowed:
                raise PonderError(
                    f"--{f.name.replace('_', '-')}: {getattr(cfg, f.name)!r} is not one of {', '.join(map(str, allowed))}"
                )


def _parse_scalar(kind: Any):
    if kind is bool:
        return lambda s: s.lower() in ("1", "true", "yes", "on")
    if get_origin(kind) is Literal:
        return str
    if get_origin(kind) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        inner = [a for a in get_args(kind) if a is not type(None)]
        return _parse_scalar(inner[0])
    return kind if kind in (int, float, str) else str


def add_config_args(parser: argparse.ArgumentParser, cls: type, skip: set[str] | None = None) -> set[str]:
    """Add one ``--field`` option per field of config class ``cls`` (default: the field's default),
    except the names in ``skip`` (options several configs share are added once); returns the names added."""
    hints = typing.get_type_hints(cls)
    taken = set(parser._option_string_actions)  # e.g. a command's own --seed, which wins
    fields = [
        f for f in dataclasses.fields(cls)
        if f.name not in (skip or set()) and f"--{f.name.replace('_', '-')}" not in taken
    ]
    if not fields:
        return set()
    group = parser.add_argument_group(f"{cls.__name__} options")
    for f in fields:
        kind = hints[f.name]
        extra = {"metavar": f.name.upper()}
        if get_origin(kind) is Literal:
            extra["metavar"] = "{" + ",".join(map(str, get_args(kind))) + "}"
        group.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f"cfg_{f.name}",
            type=_parse_scalar(kind),
            default=None,
            # argparse %-formats help text: a literal % (say, "51% measured") must be doubled
            help=f"{f.metadata.get('help', '')} (default: {f.default})".replace("%", "%%"),
            **extra,
        )
    return {f.name for f in fields}


def config_from(
    cls: type, args: argparse.Namespace | None = None, yaml_path: str | Path | None = None, exclusive: bool = False, **overrides
):
    """Build ``cls`` from defaults < YAML file < command-line options < keyword overrides.

    ``exclusive``: the parser's config options all belong to alternatives of ``cls`` (e.g. the
    options of every search method), so one that ``cls`` lacks is an error rather than ignored.
    """
    values: dict[str, Any] = {}
    if yaml_path:
        path = Path(yaml_path)
        if not path.is_file():
            raise PonderError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise PonderError(f"{path}: expected a mapping of option: value")
        values.update(loaded)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise PonderError(f"{yaml_path}: unknown option(s) for {cls.__name__}: {', '.join(sorted(unknown))}")
    if args is not None:
        given = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None}
        for name, v in given.items():
            if name in names:
                values[name] = v
            elif exclusive:
                raise PonderError(f"--{name.replace('_', '-')} does not apply here ({cls.__name__} has no such option)")
    values.update({k: v for k, v in overrides.items() if k in names and v is not None})
    return cls(**values)


def nested(factory) -> Any:
    """A field holding another config (e.g. the loop's MCTS settings); ``factory`` makes its default."""
    return dataclasses.field(default_factory=factory, metadata={"help": (factory.__doc__ or "").strip().splitlines()[0] if factory.__doc__ else ""})


def _is_config(kind: Any) -> bool:
    return isinstance(kind, type) and dataclasses.is_dataclass(kind)


def build(cls: type, values: dict[str, Any], where: str = "") -> Any:
    """``cls`` from a (possibly nested) mapping over its defaults; unknown keys are named with their path."""
    if not isinstance(values, dict):
        raise PonderError(f"{where or cls.__name__}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise PonderError(f"unknown option(s) {', '.join((where + '.' if where else '') + u for u in unknown)}")
    kw = {}
    for name, v in values.items():
        kind = hints[name]
        if _is_config(kind):
            # a partial group (``--set search.k=4``) keeps the rest of *this field's* defaults, which
            # may differ from the group class's own (the loop's MCTS settings are not MCTSConfig())
            path = f"{where}.{name}" if where else name
            if not isinstance(v, dict):
                raise PonderError(f"{path}: expected a group of options (like {path}.FIELD=VALUE), got {v!r}")
            f = names[name]
            base = dataclasses.asdict(f.default_factory()) if f.default_factory is not dataclasses.MISSING else {}
            kw[name] = build(kind, {**base, **v}, path)
        elif get_origin(kind) is tuple and isinstance(v, list):
            kw[name] = tuple(v)
        else:
            kw[name] = v
    try:
        return cls(**kw)
    except TypeError as e:
        raise PonderError(f"{where or cls.__name__}: {e}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain data (tuples as lists), ready for YAML."""
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))


def apply_sets(values: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """Apply ``--set a.b=VALUE`` overrides (VALUE read as YAML: 3, 0.5, true, [a, b]) to a nested mapping."""
    for item in sets:
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise PonderError(f"--set {item!r}: expected KEY=VALUE, e.g. search.simulations=32")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise PonderError(f"--set {item!r}: cannot read the value") from None
        parts = key.strip().split(".")
        node = values
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise PonderError(f"--set {item!r}: {p} is not a group of options")
        node[parts[-1]] = value
    return values
