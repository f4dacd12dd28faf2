"""One typed configuration: every setting of a run, its default and its help, in one place.

:class:`RunConfig` holds the sections a run is made of (:class:`DataConfig`,
:class:`EnvConfig`, :class:`ModelConfig`, :class:`PPOConfig`, :class:`SelectionConfig`) plus
how long and where to train. The command line (generated from these fields by
:mod:`pyppo.cli.flags`), TOML files (``--config``), ``config.json`` in each run dir,
checkpoints, :class:`pyppo.TradingEnv`, :class:`pyppo.TradingActorCritic` and
:class:`pyppo.PPOTrainer` all read their defaults
from these dataclasses, so the command line and the Python API train the same run.

A field's ``metadata`` says how it appears on the command line: ``help``; ``flag`` when the
flag is not ``--field-name`` (``--no-aux`` for ``enable_auxiliary_losses``: a boolean whose
flag turns it off); ``aliases`` for older flag spellings that keep working; ``choices``.

The auxiliary heads: the model has exactly two, for a short and a long horizon
(:attr:`DataConfig.horizons`, ``("1h", "24h")`` by default). Their coefficients are
:attr:`PPOConfig.aux_short_coef` and :attr:`PPOConfig.aux_long_coef`; the names users of the
1h/24h model know, ``aux_1h_coef`` and ``aux_24h_coef``, are accepted for them everywhere
(keyword arguments, flags, TOML). Everything users read (metric names, log messages, report
columns, prediction fields) is named after the horizon labels: ``aux_1h``, ``pred_24h``.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def _opt(default: Any, help: str, **cli: Any) -> Any:
    """A dataclass field with its command-line help (and flag name, aliases, choices, and
    ``valid``: a (description, predicate) pair its value must satisfy unless it is None)."""
    return field(default=default, metadata={"help": help, **cli})


# What a setting's value must be: (what to tell the user, the test).
AT_LEAST_1 = ("a whole number >= 1", lambda v: v >= 1)
AT_LEAST_0 = ("a whole number >= 0", lambda v: v >= 0)
FRACTION = ("a number in [0, 1]", lambda v: 0 <= v <= 1)
POSITIVE = ("a finite number > 0", lambda v: math.isfinite(v) and v > 0)
NON_NEGATIVE = ("a finite number >= 0", lambda v: math.isfinite(v) and v >= 0)


class _Validated:
    """Checks every field's ``valid`` metadata after construction (and after
    ``dataclasses.replace``), so a bad value fails where it is set, before any data loads."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("per_member") and isinstance(value, (list, tuple)):
                # One value per member; a single one is the plain setting.
                value = tuple(float(v) for v in value) if len(value) != 1 else float(value[0])
                setattr(self, f.name, value)
            if "valid" in f.metadata and value is not None:
                what, ok = f.metadata["valid"]
                for item in (
                    value if isinstance(value, tuple) and f.metadata.get("per_member") else (value,)
                ):
                    if not ok(item):
                        flag = flag_of(f)
                        raise ValueError(f"{f.name} ({flag}) must be {what}, got {item!r}")
            choices = f.metadata.get("choices")
            if choices and value is not None and value not in choices:
                raise ValueError(f"{f.name} must be one of {', '.join(choices)}, got {value!r}")


def format_seeds(seeds: Sequence[int]) -> str:
    """Seeds as a user would write them: ``0-7`` for a run of consecutive seeds, else
    ``0,3,5``."""
    if len(seeds) > 2 and list(seeds) == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(str(s) for s in seeds)


def _per_member(default: float, help: str, **cli: Any) -> Any:
    """A setting that may differ between a population's members: one value for all, or one
    per member (``--lr 1e-4,3e-4``, a TOML list)."""
    return _opt(default, f"{help}; one value, or one per member (a,b,c)", per_member=True, **cli)


# A per-member setting's type: one value, or one per member.
PerMember = float | tuple[float, ...]


def parse_seeds(spec: str, base: int = 0) -> tuple[int, ...]:
    """The seeds a ``--seeds`` value names: ``"8"`` is 8 seeds from ``base`` (8 members),
    ``"0-7"`` the range 0 to 7, ``"0,3,5"`` that list (ranges may appear in a list:
    ``"0-3,8"``). Raises ``ValueError`` for anything else, a negative seed or one named twice.

    :param spec: the value as typed.
    :param base: the first seed of a bare count (``--seed``).
    """
    text = str(spec).strip()
    if text.isdigit():
        count = int(text)
        if count < 1:
            raise ValueError(f"seeds {spec!r}: a count of seeds must be at least 1")
        return tuple(range(base, base + count))
    seeds: list[int] = []
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise ValueError(
                f"seeds {spec!r}: give N (a count), a-b (a range) or a,b,c (a list) of "
                "whole numbers >= 0"
            )
        first, last = int(lo), int(hi) if dash else int(lo)
        if last < first:
            raise ValueError(f"seeds {spec!r}: the range {part.strip()} runs backwards")
        seeds += range(first, last + 1)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds {spec!r}: a seed is named twice")
    return tuple(seeds)


# Older keyword/flag names of settings, accepted everywhere: old name -> field name.
ALIASES = {"aux_1h_coef": "aux_short_coef", "aux_24h_coef": "aux_long_coef"}


@dataclass
class DataConfig(_Validated):
    """Which bars to train on: a CSV/Parquet file, or the embedded synthetic market."""

    path: str | None = _opt(
        None,
        "CSV or Parquet file of OHLCV bars (default: the embedded synthetic market); several "
        "symbols: comma-separated files, a folder, a glob, or one file with a symbol column",
        flag="--data",
    )
    timestamp_col: str | None = _opt(None, "the timestamp column, when pyppo cannot find it")
    timestamp_format: str | None = _opt(None, "strftime format, e.g. %%d/%%m/%%Y %%H:%%M")
    price_col: str | None = _opt(None, "the price column, when not close/price/last/adj close")
    repair: str | None = _opt(
        None,
        "fix rows with NaN, infinite, zero/negative or inconsistent OHLC prices instead of "
        "refusing them",
        choices=("drop", "ffill"),
    )
    horizons: tuple[str, str] = _opt(
        ("1h", "24h"),
        "the auxiliary heads' short and long horizons: durations or bar counts",
    )
    bars: int = _opt(20_000, "synthetic market length", valid=AT_LEAST_1)
    data_seed: int = _opt(0, "synthetic market seed")
    bad_ticks: float = _opt(
        0.0,
        "plant zero prices, NaN bars and +1000%% spikes at this rate (synthetic market only)",
        valid=("a rate in [0, 0.3)", lambda v: 0 <= v < 0.3),
    )


@dataclass
class EnvConfig(_Validated):
    """The trading environment: episodes, observation window, fees, actions."""

    num_envs: int = _opt(256, "episodes stepped together", valid=AT_LEAST_1)
    episode_length: int = _opt(720, "steps per training episode", valid=AT_LEAST_1)
    window: int = _opt(60, "bars of normalized returns in each observation", valid=AT_LEAST_1)
    fee: float = _opt(
        1e-4, "cost per unit of position change (1e-4 = 1 basis point)", valid=NON_NEGATIVE
    )
    allow_short: bool = _opt(True, "flat/long actions only", flag="--long-only")
    fill: str = _opt(
        "close",
        "when a decision on a bar's close fills: at that close, or at the next bar's open "
        "(needs an open column)",
        choices=("close", "next_open"),
    )
    spread: float = _opt(
        0.0,
        "bid-ask spread in basis points: half of it is paid per unit of position change, on "
        "top of the fee",
        valid=NON_NEGATIVE,
    )
    portfolio: bool = _opt(
        False,
        "with several symbols: one agent trades them all together, a short/flat/long slot of "
        "1/N of the equity each (default: pooled, each episode trades one symbol)",
    )
    max_weight: float = _opt(
        1.0, "--portfolio: the largest |weight| of one symbol, a fraction of equity", valid=POSITIVE
    )
    max_gross: float = _opt(
        1.0, "--portfolio: the largest sum of |weight| over the symbols", valid=POSITIVE
    )


@dataclass
class ModelConfig(_Validated):
    """The actor-critic with two auxiliary return heads."""

    hidden_dim: int = _opt(
        128, "width of the model's trunk", valid=("a whole number >= 2", lambda v: v >= 2)
    )
    aux_limit: float = _opt(
        1.0, "auxiliary predictions are clamped to +-this (1 = +-100%%)", valid=POSITIVE
    )


@dataclass
class PPOConfig(_Validated):
    """PPO hyperparameters and the NaN protection of the update (stored in checkpoints)."""

    lr: PerMember = _per_member(3e-4, "Adam learning rate", valid=POSITIVE)
    # Large by the usual measure because the default run takes few optimizer steps (960):
    # without it, 60 passes over the training bars let the trunk fit their noise, and the
    # heads and the policy generalize worse (benchmarks/RESULTS.md, "Defaults").
    weight_decay: float = _opt(
        10.0,
        "decoupled weight decay (AdamW): every step shrinks each weight (not biases) by lr x this",
        valid=NON_NEGATIVE,
    )
    gamma: PerMember = _per_member(0.99, "discount factor", valid=FRACTION)
    gae_lambda: PerMember = _per_member(0.95, "GAE lambda", valid=FRACTION)
    clip_epsilon: PerMember = _per_member(0.2, "PPO ratio clip", valid=POSITIVE)
    value_coef: float = _opt(0.5, "value loss coefficient", valid=NON_NEGATIVE)
    entropy_coef: PerMember = _per_member(0.01, "entropy bonus coefficient", valid=NON_NEGATIVE)
    aux_short_coef: PerMember = _per_member(
        0.1,
        "short-horizon auxiliary loss coefficient",
        valid=NON_NEGATIVE,
        aliases=("--aux-1h-coef",),
    )
    aux_long_coef: PerMember = _per_member(
        0.1,
        "long-horizon auxiliary loss coefficient",
        valid=NON_NEGATIVE,
        aliases=("--aux-24h-coef",),
    )
    enable_auxiliary_losses: bool = _opt(
        True,
        "no auxiliary losses: the heads still predict, only policy and value train",
        flag="--no-aux",
    )
    max_grad_norm: float = _opt(
        0.5,
        "clip the total gradient norm to this (inf: no clipping)",
        valid=("a number > 0", lambda v: v > 0),
    )
    nan_policy: str = _opt(
        "zero",
        "zero: zero NaN/inf gradient elements; skip: skip the whole step",
        choices=("zero", "skip"),
    )
    guards: bool = _opt(
        True,
        "turn every guard off (to see a run die loudly; not for real use)",
        flag="--no-guards",
    )
    num_steps: int = _opt(64, "rollout steps per env per update", valid=AT_LEAST_1)
    num_epochs: int = _opt(4, "PPO epochs per update", valid=AT_LEAST_1)
    batch_size: int = _opt(4096, "minibatch size", valid=AT_LEAST_1)
    num_minibatches: int | None = _opt(
        None,
        "cut each rollout into this many minibatches instead (ignores --batch-size)",
        valid=AT_LEAST_1,
    )
    target_kl: float | None = _opt(
        None, "stop an update's epochs when the mean KL exceeds this", valid=POSITIVE
    )
    seed: int = _opt(0, "seeds the model, the environment and the trainer")
    seeds: str | None = _opt(
        None,
        "train a population in one process, one member per seed: N (N seeds from --seed), a "
        "range a-b, or a list a,b,c; member k computes what --seed k alone would",
        valid=("N, a-b or a,b,c", lambda v: bool(parse_seeds(v))),
    )
    # For GPUs (README, "Settings"; their CPU measurements are in benchmarks/RESULTS.md).
    compile: bool = _opt(False, "torch.compile the update's forward pass and loss")
    bf16: bool = _opt(False, "model forward passes under bfloat16 autocast (weights float32)")
    checkpoint_every: int = _opt(
        10, "save checkpoint.pt every this many updates (0: at the end)", valid=AT_LEAST_0
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        members = len(self.member_seeds)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("per_member") and isinstance(value, tuple) and len(value) != members:
                raise ValueError(
                    f"{f.name} ({flag_of(f)}) has {len(value)} values for {members} member(s): "
                    f"give one value, or one per member"
                )

    def per_member(self, name: str) -> tuple[float, ...]:
        """A per-member setting's value for each member (``len(member_seeds)`` values)."""
        value = getattr(self, name)
        return value if isinstance(value, tuple) else (value,) * len(self.member_seeds)

    @property
    def aux_coefs(self) -> tuple[PerMember, PerMember]:
        """(short, long) auxiliary loss coefficients."""
        return (self.aux_short_coef, self.aux_long_coef)

    @property
    def member_seeds(self) -> tuple[int, ...]:
        """One seed per member: ``seeds`` parsed, or ``(seed,)`` for one model."""
        return parse_seeds(self.seeds, self.seed) if self.seeds else (self.seed,)


@dataclass
class SelectionConfig(_Validated):
    """How many configurations were tried before this one (for the deflated Sharpe ratio)."""

    trials: int = _opt(
        1,
        "configurations tried whose results were looked at before choosing this one (a sweep "
        "adds its trials); deflates the Sharpe ratio in reports",
        flag="--selection-trials",
        valid=AT_LEAST_1,
    )
    tuned_until: str | None = _opt(
        None,
        "the last bar a sweep scored these settings on (reports flag test bars before it)",
        flag="--selection-tuned-until",
    )


@dataclass
class RunConfig(_Validated):
    """Everything a training run is: its data, env, model, PPO settings, and how long and
    where it trains."""

    data: DataConfig = field(default_factory=DataConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    epochs: int = _opt(60, "passes over the training bars", valid=AT_LEAST_1)
    total_steps: int | None = _opt(
        None, "train for this many env steps instead of --epochs", valid=AT_LEAST_1
    )
    run_dir: str | None = _opt(
        None, "where metrics.csv and checkpoints go (default runs/<date-time>)"
    )
    resume: bool = _opt(False, "continue the run in --run-dir from its checkpoint.pt")
    overwrite: bool = _opt(False, "replace the run already in --run-dir (it is deleted)")
    device: str | None = _opt(None, "cpu or cuda (default: cuda if present)")
    quiet: bool = _opt(False, "no progress bar")
    debug: bool = _opt(False, "show the full traceback of an error")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (dicts, lists, numbers, strings, None): for JSON and checkpoints."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """The inverse of :meth:`to_dict`; missing keys keep their defaults."""
        return apply(cls(), values)

    def to_toml(self, auto: Sequence[str] = (), auto_value: str = "auto") -> str:
        """The settings as TOML (unset optional values are left out: TOML has no null).

        :param auto: dotted names of settings to write as ``auto_value`` instead of their
            value (settings derived from the data unless set, such as ``data.horizons``).
        """
        import tomli_w  # (only --print-config writes TOML; not every machine has it)

        values = self.to_dict()
        for name in auto:
            section, _, key = name.rpartition(".")
            (values[section] if section else values)[key] = auto_value
        return tomli_w.dumps(_drop_none(values))


SECTIONS = {
    "data": DataConfig,
    "env": EnvConfig,
    "model": ModelConfig,
    "ppo": PPOConfig,
    "selection": SelectionConfig,
}


# -- reading values into a config --------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {
        k: _drop_none(v) if isinstance(v, dict) else v for k, v in values.items() if v is not None
    }


def field_types(cls: type) -> dict[str, Any]:
    """The type hint of each field of a config dataclass, by name."""
    return typing.get_type_hints(cls)


def flag_of(f: dataclasses.Field) -> str:
    """A setting's command-line flag: its ``flag`` metadata, else ``--field-name``."""
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def _convert(value: Any, hint: Any, name: str) -> Any:
    """``value`` as the type a field declares; a clear ``ValueError`` otherwise."""
    args = typing.get_args(hint)
    if value is None:
        if type(None) in args:
            return None
        raise ValueError(f"{name} cannot be empty")
    if type(None) in args:  # X | None
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    if set(args) == set(typing.get_args(PerMember)):  # one number, or one per member
        if isinstance(value, str):
            items = value.split(",")
        else:
            items = list(value) if isinstance(value, (list, tuple)) else [value]
        numbers = tuple(_convert(item, float, name) for item in items)
        return numbers[0] if len(numbers) == 1 else numbers
    origin = typing.get_origin(hint)
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else list(value)
        if len(args) == 2 and args[1] is not Ellipsis and len(items) != 2:
            raise ValueError(f"{name} needs exactly two values, got {len(items)}: {value!r}")
        return tuple(str(v).strip() for v in items)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{name} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a whole number, got {value!r}") from None
    if hint is float:
        if isinstance(value, bool):
            raise ValueError(f"{name} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {value!r}") from None
    if hint is str:
        return str(value)
    raise TypeError(f"{name}: unsupported setting type {hint!r}")  # pragma: no cover


def _setting(obj: Any, name: str, value: Any, where: str) -> Any:
    """``obj`` with field ``name`` set to ``value`` (converted and checked)."""
    name = ALIASES.get(name, name)
    hints = field_types(type(obj))
    if name not in hints or name in SECTIONS:
        known = ", ".join(f.name for f in dataclasses.fields(obj) if f.name not in SECTIONS)
        raise ValueError(f"unknown setting {where}{name!r} (known: {known})")
    return _convert(value, hints[name], f"{where}{name}")


def apply(config: RunConfig, values: dict[str, Any]) -> RunConfig:
    """``config`` with ``values`` (nested like :meth:`RunConfig.to_dict`) applied.
    Raises ``ValueError`` naming an unknown or ill-typed setting."""
    top: dict[str, Any] = {}
    sections = {name: getattr(config, name) for name in SECTIONS}
    for key, value in values.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ValueError(f"[{key}] must be a table of settings")
            section = sections[key]
            updates = {
                ALIASES.get(k, k): _setting(section, k, v, f"{key}.") for k, v in value.items()
            }
            sections[key] = dataclasses.replace(section, **updates)
        else:
            top[key] = _setting(config, key, value, "")
    return dataclasses.replace(config, **sections, **top)


def load_toml(path: str | Path) -> dict[str, Any]:
    """The settings in a TOML file (any subset of :meth:`RunConfig.to_dict`'s layout)."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as err:
        raise ValueError(f"cannot read config file {path}: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"config file {path} is not valid TOML: {err}") from None


def ppo_config(config: PPOConfig | None = None, **overrides: Any) -> PPOConfig:
    """``config`` (default :class:`PPOConfig`) with keyword ``overrides``, old names
    (``aux_1h_coef``) included. Raises ``TypeError`` for an unknown setting."""
    config = config or PPOConfig()
    updates = {}
    for name, value in overrides.items():
        key = ALIASES.get(name, name)
        if key not in {f.name for f in dataclasses.fields(PPOConfig)}:
            raise TypeError(f"unknown PPO setting {name!r}")
        updates[key] = value
    return dataclasses.replace(config, **updates)


def get(config: RunConfig, dotted: str) -> Any:
    """The value of a dotted setting name (``"ppo.lr"``)."""
    obj: Any = config
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def same_value(a: Any, b: Any) -> bool:
    """Equal settings (NaN equals NaN, tuples equal lists)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b
