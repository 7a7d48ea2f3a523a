"""The runner from Python: plan a run, train it, evaluate a checkpoint - what ``mfdsl
train`` and ``mfdsl eval`` do, for code that drives many runs (a sweep, a notebook).

    from mfdsl.runner import api

    plan = api.plan_run("specs/demo_tiny.mf", data="/data/tiny", max_steps=100)
    print(plan.summary(), plan.total_steps, plan.schedule.lr_at(10))
    summary = api.train("specs/demo_tiny.mf", data="/data/tiny", output="runs/a",
                        max_steps=100, recipe={"lr": 1e-3})
    result = api.evaluate("runs/a", data="/data/tiny")

Options are :class:`mfdsl.run_options.TrainOptions` fields by name (``recipe``: recipe
fields to override); an unknown name is a :class:`~mfdsl.runner.errors.RunError`, as every
refusal is (a :class:`mfdsl.errors.UserError`: its ``exit_code`` is the CLI's).

A script that trains under a launcher (torchrun, srun) should end with
``mfdsl.runner.distributed.leave_process(0)``, as ``mfdsl`` does: a rank that exits through
the interpreter's finalization can abort after a run that succeeded (its docstring says why).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Mapping, Optional, Sequence, Union

from ..ir import ModelSpec
from .errors import RunError
from .hooks import Hook
from ..run_options import TrainOptions
from .plan import RunPlan

SpecLike = Union[str, "os.PathLike[str]", ModelSpec]


def load(spec: SpecLike) -> ModelSpec:
    """A spec file (``.mf`` or ``.yaml``) read and checked, or a :class:`ModelSpec` as is."""
    if isinstance(spec, ModelSpec):
        return spec
    from ..api import load_spec

    return load_spec(os.fspath(spec))


def _checked(cls: Any, kw: Dict[str, Any]) -> Any:
    """``cls(**kw)``, every name known (the values are checked where a run starts)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(kw) - known)
    if unknown:
        raise RunError(f"unknown option(s) {', '.join(unknown)}; the options are "
                       f"{', '.join(sorted(known - {'recipe_overrides', 'argv'}))}")
    if isinstance(kw.get("img_size"), int):
        kw["img_size"] = (kw["img_size"], kw["img_size"])
    return cls(**kw)


def options(recipe: Optional[Mapping[str, Any]] = None, **kw: Any) -> TrainOptions:
    """Run options from keyword arguments, checked by name."""
    if recipe:
        kw["recipe_overrides"] = dict(recipe)
    return _checked(TrainOptions, kw)


def plan_run(spec: SpecLike, **kw: Any) -> RunPlan:
    """The plan ``train`` would run (``mfdsl train --dry-run``): reads the spec and the data's
    file lists, writes nothing. ``dataset_size=N`` stands in for the data, ``world_size``
    for the processes."""
    from .plan import dry_run

    return dry_run(load(spec), options(**kw))


def train(spec: SpecLike, *, hooks: Sequence[Hook] = (), **kw: Any) -> Dict[str, Any]:
    """Train ``spec`` (``mfdsl train``) and return its summary (``summary.json``).
    ``hooks``: :class:`~mfdsl.runner.hooks.Hook` objects the loop calls after the run's
    own."""
    from .train import run_training

    return run_training(load(spec), options(**kw), hooks)


def evaluate(checkpoint: str, spec: Optional[SpecLike] = None, **kw: Any) -> Dict[str, Any]:
    """Top-1/top-5/loss of ``checkpoint`` (a run folder or weights file; ``mfdsl eval``)
    over ``data``'s split; keywords are :class:`~mfdsl.run_options.EvalOptions` fields."""
    from .eval_run import run_evaluation
    from ..run_options import EvalOptions

    return run_evaluation(load(spec) if spec is not None else None, checkpoint,
                          _checked(EvalOptions, kw))
