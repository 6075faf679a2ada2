"""Sweep files: an experiment config without `model`, plus a `sweep` section.

The section names the models and inputs to cross; every cell (model x input) is a full
:class:`~keras_blood.config.schema.Config`, validated before anything runs. Like keras_blood.config.loading,
this module imports no TensorFlow, so a bad sweep file is reported in a fraction of a
second.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from keras_blood.config.loading import (
    _read_file,
    _source,
    apply_overrides,
    describe_error,
    validate_config,
    with_output_name,
)
from keras_blood.config.quote import cut, problems
from keras_blood.config.schema import Config, ModelConfig, _Strict
from keras_blood.errors import ConfigError

SWEEP_INPUTS = ("original", "color_extraction")
Label = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.]+$")]


class SweepSpec(_Strict):
    models: Annotated[dict[Label, ModelConfig], Field(min_length=1)] = Field(
        description="label -> model parameters; `name` defaults to the label, so "
        "`dropout03: {}` is the preset. A list of names is accepted too."
    )
    inputs: Annotated[list[Literal[SWEEP_INPUTS]], Field(min_length=1)] = Field(  # type: ignore[valid-type]
        default=list(SWEEP_INPUTS),
        description="What each model is trained on: original images, and with data.color_extraction on.",
    )
    results_dir: Path | None = Field(
        default=None, description="Default: <output.runs_dir>/<name>. Cells' runs go in its runs/."
    )

    @field_validator("models", mode="before")
    @classmethod
    def _name_defaults_to_label(cls, value: Any) -> Any:
        if isinstance(value, list):  # [basic, {name: vgg16, weights: none}, ...]
            entries = [{"name": v} if isinstance(v, str) else v for v in value]
            value = {str(e.get("name") if isinstance(e, dict) else e): e for e in entries}
        if isinstance(value, dict):
            value = {
                label: {"name": label, **(params or {})} if isinstance(params, dict | None) else params
                for label, params in value.items()
            }
        return value

    @field_validator("inputs")
    @classmethod
    def _distinct_inputs(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("an input is named more than once")
        return value


class SweepCell(BaseModel):
    model_config = ConfigDict(frozen=True, protected_namespaces=())

    label: str  # the model's label in sweep.models
    input: str  # one of SWEEP_INPUTS
    config: Config

    @property
    def key(self) -> str:
        return f"{self.label}-{self.input}"


class Sweep(BaseModel):
    model_config = ConfigDict(frozen=True, protected_namespaces=())

    name: str
    spec: SweepSpec
    results_dir: Path
    cells: list[SweepCell]


def _describe_sweep_error(err: dict[str, Any], raw_sweep: dict[str, Any], models: Any) -> str:
    """``models``: sweep.models as validated (a list made a mapping keyed by name)."""
    loc = [str(p) for p in err["loc"]]
    if (
        len(loc) >= 2
        and loc[0] == "models"
        and isinstance(models, dict)
        and isinstance(models.get(loc[1]), dict | None)
    ):
        # An error inside one model: described as the `model` section of an experiment.
        label = loc[1]
        model_raw = {"model": {"name": label, **(models.get(label) or {})}}
        message = describe_error({**err, "loc": ("model", *err["loc"][2:])}, model_raw)
        return f"sweep.models.{cut(label)}{message.removeprefix('model')}"
    return describe_error(err, raw_sweep, root=SweepSpec, prefix="sweep.")


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Read a sweep file (``--set`` overrides apply to every cell) and validate every cell."""
    file = _read_file(path)
    raw = apply_overrides(copy.deepcopy(file), list(overrides or []))
    raw_sweep = raw.pop("sweep", None)
    if not isinstance(raw_sweep, dict):
        raise ConfigError(f"{path}: a sweep file needs a `sweep:` section with models and inputs")
    if "model" in raw:
        raise ConfigError(f"{path}: model: a sweep sets the model per cell; list models in sweep.models")
    try:
        spec = SweepSpec.model_validate(raw_sweep)
    except ValidationError as exc:
        # As validated: a list of models keyed by name, so that errors name the model too.
        models = SweepSpec._name_defaults_to_label(raw_sweep.get("models"))
        described = problems(exc.errors(), lambda e: _describe_sweep_error(e, raw_sweep, models))
        raise ConfigError(f"{path}: {described}") from None
    base = validate_config({**raw, "model": next(iter(spec.models.values())).model_dump()}, str(path))
    if undrawn := sorted(base.data.undrawn_splits):
        raise ConfigError(
            f"{path}: data.{undrawn[0]}_fraction = 0: a sweep compares its cells on their validation and test "
            "splits, and this draws none; hold both out (a fraction above 0)"
        )
    results_dir = spec.results_dir or base.output.runs_dir / base.name
    cells = []
    for label, model in spec.models.items():
        for input_name in spec.inputs:
            cell_raw = copy.deepcopy(raw)
            cell_raw["name"] = f"{base.name}-{label}-{input_name}"
            cell_raw["model"] = model.model_dump(mode="json")
            cell_raw.setdefault("data", {})["color_extraction"] = input_name == "color_extraction"
            # The cells' run folders live in the results folder: one TensorBoard shows all.
            cell_raw.setdefault("output", {})["runs_dir"] = str(results_dir / "runs")
            if cell_raw["output"].get("name"):  # one name per cell: cells never share versions
                cell_raw["output"]["name"] = f"{cell_raw['output']['name']}-{label}-{input_name}"
            with_output_name(cell_raw, _source(file))
            config = validate_config(cell_raw, f"{path} (cell {label}/{input_name})")
            cells.append(SweepCell(label=label, input=input_name, config=config))
    return Sweep(name=base.name, spec=spec, results_dir=results_dir, cells=cells)
