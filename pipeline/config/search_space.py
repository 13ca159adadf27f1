"""The ``tune.search_space`` section: parsing, validation and the values a trial applies.

The search space maps dotted config fields to one sampler each::

    tune:
      search_space:
        learner.lr: {loguniform: [1.0e-5, 1.0e-3]}
        rollout.temperature: {choice: [0.7, 1.0]}
        learner.ppo_epochs: {grid: [1, 2]}

This module has no Ray import at load time: :mod:`pipeline.config.tune` calls
:func:`search_space_errors` while validating, before Ray starts. The Tune domains are built by
:func:`tune_param_space` and :func:`pbt_mutations` (``ray.tune`` imported there).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
from typing import Any

from pipeline.config.coerce import FAIL, coerce, field_hints, is_section, optional_inner, short, try_coerce


# Sampler name -> what its argument looks like (for error messages).
SAMPLERS = {
    "loguniform": "[low, high] with 0 < low < high (float fields)",
    "uniform": "[low, high] with low < high (float fields)",
    "quniform": "[low, high, q] with low < high and q > 0 (float fields)",
    "randint": "[low, high] integers, high exclusive, low < high (int fields)",
    "choice": "a non-empty list of values",
    "grid": "a non-empty list of values (every one is run)",
}

# Fields a sweep sets for each trial itself: sampling them would break the trial layout.
_MANAGED = ("storage_path", "logging.dir", "checkpoint.dir", "checkpoint.export_dir", "checkpoint.resume")

# Fields that shape a trial's placement group, which is fixed when the trial first starts.
_LAYOUT = ("learner.num_ranks", "rollout.num_workers", "resources.")


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One parsed search-space entry."""

    key: str
    """Dotted config field, e.g. ``learner.lr``."""
    sampler: str
    """One of :data:`SAMPLERS`."""
    args: tuple
    """Coerced arguments: numbers for ranges, field-typed values for ``choice`` / ``grid``."""

    def candidates(self) -> list:
        """Values that bound what the sampler can produce (checked against the config rules)."""
        if self.sampler in ("choice", "grid"):
            return list(self.args)
        if self.sampler == "randint":
            return [self.args[0], self.args[1] - 1]
        return [self.args[0], self.args[1]]


def _leaf_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for name, hint in field_hints(cls).items():
        dotted = f"{prefix}{name}"
        keys.extend(_leaf_keys(hint, dotted + ".") if is_section(hint) else [dotted])
    return keys


def field_hint(root: type, key: str) -> Any:
    """Type annotation of dotted leaf field ``key`` of config class ``root``; ``ValueError`` when
    there is none."""
    cls: Any = root
    parts = key.split(".")
    for i, part in enumerate(parts):
        hints = field_hints(cls) if is_section(cls) else {}
        if part not in hints:
            close = difflib.get_close_matches(key, _leaf_keys(root), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"'{key}' is not a config field{hint}")
        cls = hints[part]
        if is_section(cls) and i == len(parts) - 1:
            raise ValueError(f"'{key}' is a config section; name one of its fields, e.g. '{key}.{next(iter(field_hints(cls)))}'")
    return cls


def _number(value: Any, want_int: bool) -> Any:
    out = try_coerce(value, int if want_int else float)
    return None if out is FAIL or (not want_int and not math.isfinite(out)) else out


def parse_dimension(root: type, key: str, spec: Any) -> Dimension:
    """Parse one ``key: {sampler: args}`` entry; ``ValueError`` names ``tune.search_space.<key>``."""
    name = f"tune.search_space.{key}"
    try:
        hint = field_hint(root, key)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    if key.startswith("tune.") or key in _MANAGED:
        raise ValueError(f"{name}: the sweep sets this field for each trial itself; it cannot be searched")
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ValueError(
            f"{name}: expected exactly one sampler as {{sampler: args}} "
            f"({', '.join(SAMPLERS)}), got {short(spec)}"
        )
    sampler, args = next(iter(spec.items()))
    if sampler not in SAMPLERS:
        close = difflib.get_close_matches(str(sampler), list(SAMPLERS), n=1)
        hint_text = f"did you mean '{close[0]}'?" if close else f"known samplers: {', '.join(SAMPLERS)}"
        raise ValueError(f"{name}: unknown sampler {sampler!r} ({hint_text})")
    malformed = ValueError(f"{name}: {sampler} expects {SAMPLERS[sampler]}, got {short(args)}")
    base_type = optional_inner(hint) or hint

    if sampler in ("choice", "grid"):
        if not isinstance(args, list) or not args:
            raise malformed
        values = tuple(coerce(v, hint, f"{name}.{sampler}[{i}]") for i, v in enumerate(args))
        return Dimension(key, sampler, values)

    want_int = sampler == "randint"
    if base_type is not (int if want_int else float):
        kinds = {int: "an integer", float: "a float", str: "a string", bool: "a boolean"}
        field_kind = kinds.get(base_type, f"a {getattr(base_type, '__name__', base_type)}")
        if base_type is float:
            instead = "uniform, loguniform, quniform or choice"
        elif base_type is int:
            instead = "randint, choice or grid"
        else:
            instead = "choice or grid"
        raise ValueError(
            f"{name}: {sampler} samples {'integers' if want_int else 'floats'} but '{key}' is "
            f"{field_kind} field; use {instead}"
        )
    size = 3 if sampler == "quniform" else 2
    if not isinstance(args, list) or len(args) != size:
        raise malformed
    numbers = [_number(a, want_int) for a in args]
    if any(n is None for n in numbers):
        raise malformed
    low, high = numbers[0], numbers[1]
    if not low < high or (sampler == "loguniform" and low <= 0) or (sampler == "quniform" and numbers[2] <= 0):
        raise malformed
    return Dimension(key, sampler, tuple(numbers))


def parse_space(cfg) -> list[Dimension]:
    """The dimensions of ``cfg.tune.search_space``."""
    return [parse_dimension(type(cfg), key, spec) for key, spec in cfg.tune.search_space.items()]


def set_field(cfg, key: str, value: Any) -> None:
    """Set dotted ``key`` of ``cfg`` to ``value``, coerced to the field's type."""
    if hasattr(value, "item") and callable(value.item):  # numpy scalars from Tune samplers
        value = value.item()
    *path, leaf = key.split(".")
    section = cfg
    for part in path:
        section = getattr(section, part)
    setattr(section, leaf, coerce(value, field_hints(type(section))[leaf], key))


def apply_values(cfg, values: dict[str, Any]) -> Any:
    """A validated copy of ``cfg`` with each dotted key of ``values`` set (unknown keys ignored:
    Tune may add its own)."""
    out = copy.deepcopy(cfg)
    known = set(out.tune.search_space)
    for key, value in values.items():
        if key in known:
            set_field(out, key, value)
    return out.validate()


def search_space_errors(cfg, base_valid: bool) -> list[str]:
    """Problems with ``cfg.tune`` that involve the search space, one sentence each.

    With ``base_valid`` (the rest of the config passed), every value that bounds a sampler is
    also applied to a copy of the config and validated, so ``learner.num_ranks: {grid: [1, 3]}``
    with 4 samples per step fails here instead of in the third trial.
    """
    tc = cfg.tune
    errors: list[str] = []
    dims: list[Dimension] = []
    for key, spec in tc.search_space.items():
        try:
            dims.append(parse_dimension(type(cfg), key, spec))
        except ValueError as err:
            errors.append(str(err))
    if tc.scheduler == "pbt" and not tc.search_space:
        errors.append("tune.search_space: the pbt scheduler needs at least one hyperparameter to perturb")
    for dim in dims:
        if tc.scheduler == "pbt" and any(dim.key == k or (k.endswith(".") and dim.key.startswith(k)) for k in _LAYOUT):
            errors.append(
                f"tune.search_space.{dim.key}: pbt cannot perturb a field that changes a trial's "
                "placement group (its bundles are fixed when the trial starts); use asha or fifo"
            )
    if not base_valid or errors:
        return errors
    probe = copy.deepcopy(cfg)
    probe.tune = type(tc)()  # the copies are validated without recursing into the space
    for dim in dims:
        for value in dim.candidates():
            trial = copy.deepcopy(probe)
            try:
                set_field(trial, dim.key, value)
                trial.validate()
            except ValueError as err:
                detail = str(err).replace("\n", " ")
                errors.append(f"tune.search_space.{dim.key}: value {value!r} gives an invalid config: {detail}")
                break
    return errors


# ------------------------------------------------------------------------------ Tune domains


def tune_param_space(dims: list[Dimension]) -> dict[str, Any]:
    """``Tuner(param_space=...)``: a Tune domain per dotted key."""
    from ray import tune

    makers = {
        "loguniform": lambda a: tune.loguniform(a[0], a[1]),
        "uniform": lambda a: tune.uniform(a[0], a[1]),
        "quniform": lambda a: tune.quniform(a[0], a[1], a[2]),
        "randint": lambda a: tune.randint(a[0], a[1]),
        "choice": lambda a: tune.choice(list(a)),
        "grid": lambda a: tune.grid_search(list(a)),
    }
    return {d.key: makers[d.sampler](d.args) for d in dims}


def pbt_mutations(dims: list[Dimension]) -> dict[str, Any]:
    """PBT ``hyperparam_mutations``: ranges stay domains (perturbed by x0.8 / x1.2 or redrawn),
    ``choice`` and ``grid`` become lists (moved to a neighbouring value or redrawn)."""
    space = tune_param_space([d for d in dims if d.sampler not in ("choice", "grid")])
    space.update({d.key: list(d.args) for d in dims if d.sampler in ("choice", "grid")})
    return space
