"""The command line of every setting, generated from :mod:`pyppo.config`'s dataclasses.

A field's ``metadata`` says how it appears: ``help``; ``flag`` when the flag is not
``--field-name`` (``--no-aux`` for ``enable_auxiliary_losses``: a boolean whose flag turns
it off); ``aliases`` for older spellings that keep working; ``choices``. Flags not given stay
out of the parsed namespace, so the settings a user set explicitly are known
(:func:`config_from_namespace`).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from pyppo.config import ALIASES, SECTIONS, RunConfig, apply, field_types, flag_of


def _cli_fields() -> list[tuple[str | None, dataclasses.Field, Any]]:
    """(section or None, field, type hint) for every setting, in --help order."""
    rows: list[tuple[str | None, dataclasses.Field, Any]] = []
    run_hints = field_types(RunConfig)
    rows += [
        (None, f, run_hints[f.name])
        for f in dataclasses.fields(RunConfig)
        if f.name not in SECTIONS
    ]
    for section, cls in SECTIONS.items():
        hints = field_types(cls)
        rows += [(section, f, hints[f.name]) for f in dataclasses.fields(cls)]
    return rows


def _dest(section: str | None, name: str) -> str:
    return f"{section}.{name}" if section else name


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting to ``parser``; flags not given stay absent from the parsed
    namespace (``argparse.SUPPRESS``), so that explicit values can be told from defaults."""
    titles = {
        None: "run",
        "data": "data",
        "env": "environment",
        "model": "model",
        "ppo": "PPO and NaN protection",
        "selection": "selection (for the deflated Sharpe ratio)",
    }
    groups = {key: parser.add_argument_group(title) for key, title in titles.items()}
    for section, f, hint in _cli_fields():
        default = f.default
        names = [flag_of(f), *f.metadata.get("aliases", ())]
        kwargs: dict[str, Any] = {"dest": _dest(section, f.name), "default": argparse.SUPPRESS}
        shown = ",".join(default) if isinstance(default, tuple) else default
        help_text = f.metadata["help"]
        if hint is bool:
            # The flag flips the default: --no-aux sets enable_auxiliary_losses=False.
            kwargs.update(action="store_const", const=not default, help=help_text)
        else:
            if default is not None:
                help_text = f"{help_text} (default: {shown})"
            kwargs.update(help=help_text, metavar=f.name.upper())
            if "choices" in f.metadata:
                kwargs.update(choices=f.metadata["choices"], metavar=None)
        groups[section].add_argument(*names, **kwargs)


def config_from_namespace(
    namespace: argparse.Namespace, base: RunConfig | None = None
) -> tuple[RunConfig, set[str]]:
    """The config the parsed flags describe, on top of ``base``, and the dotted names of the
    settings the flags set explicitly."""
    values: dict[str, Any] = {}
    explicit: set[str] = set()
    for section, f, _ in _cli_fields():
        dest = _dest(section, f.name)
        if dest in vars(namespace):
            explicit.add(dest)
            target = values.setdefault(section, {}) if section else values
            target[f.name] = getattr(namespace, dest)
    return apply(base or RunConfig(), values), explicit


def explicit_names(values: dict[str, Any]) -> set[str]:
    """Dotted names of every setting in ``values`` (as read from a TOML file)."""
    names = set()
    for key, value in values.items():
        if key in SECTIONS and isinstance(value, dict):
            names |= {f"{key}.{ALIASES.get(k, k)}" for k in value}
        else:
            names.add(ALIASES.get(key, key))
    return names
