"""Run options declared once (mfdsl/runner/options.py): the click options of `train` and
`eval`, the dataclass defaults, the range checks and the docs' tables all come from the
fields' metadata; the exit codes listed by --help come from one table."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import click
import pytest

from conftest import run

from mfdsl.cli.run_cmds import eval_cmd, train_cmd
from mfdsl.fields import FLOAT, INT
from mfdsl.ir import RecipeSpec, settings_of
from mfdsl.run_options import EvalOptions, TrainOptions, check_options, options_of

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "specs" / "demo_tiny.mf"
COMMANDS = [(train_cmd, TrainOptions), (eval_cmd, EvalOptions)]
# Fields the command fills itself: --batch-size is the recipe's option.
FILLED = {"batch_size", "argv", "recipe_overrides", "amp_dtype"}


def _recipe_params():
    names = set()
    for name, meta, _ in settings_of(RecipeSpec):
        if meta.cli:
            names.add(name)
            if meta.cli_off:
                names.add("no_" + name)
    return names


def _options(cmd):
    return {p.name: p for p in cmd.params if isinstance(p, click.Option) and p.name != "help"}


@pytest.mark.parametrize("cmd, cls", COMMANDS, ids=["train", "eval"])
def test_every_option_has_a_field_and_every_field_an_option(cmd, cls):
    params = _options(cmd)
    recipe = _recipe_params() if cls is TrainOptions else set()
    flagged = {name for name, meta, _ in options_of(cls) if meta.flag}
    assert set(params) - recipe - flagged == set(), "options without a field"
    assert flagged - set(params) == set(), "fields without an option"
    unflagged = {f.name for f in dataclasses.fields(cls)} - flagged
    assert unflagged <= FILLED, f"fields neither an option nor filled: {unflagged - FILLED}"


@pytest.mark.parametrize("cmd, cls", COMMANDS, ids=["train", "eval"])
def test_the_dataclass_default_is_the_command_line_default(cmd, cls):
    params = _options(cmd)
    ctx = click.Context(cmd)
    for name, meta, default in options_of(cls):
        if not meta.flag:
            continue
        p = params[name]
        cli_default = p.get_default(ctx)
        if meta.multiple:
            cli_default = tuple(cli_default or ())
        assert cli_default == default, name
        assert getattr(cls(), name) == default, name
        # the spelling is the metadata's
        assert meta.name_flag in p.opts, name


@pytest.mark.parametrize("cls", [TrainOptions, EvalOptions])
def test_every_number_option_has_a_range_and_its_default_is_in_it(cls):
    for name, meta, default in options_of(cls):
        if meta.type in (INT, FLOAT) and meta.flag and not meta.flag_value:
            assert meta.min is not None or meta.choices, f"{name} has no range"
    check_options(cls())  # every default passes its own check


def test_the_workers_default_is_the_same_for_train_eval_and_the_dataclass():
    assert TrainOptions().workers == EvalOptions().workers == dict(
        (n, d) for n, _, d in options_of(TrainOptions))["workers"]


@pytest.mark.parametrize("args, msg", [
    (["--dry-run", "--world-size", "0"], "--world-size must be >= 1, got 0"),
    (["--dry-run", "--dataset-size", "0"], "--dataset-size must be >= 1, got 0"),
    (["--workers", "-1"], "--workers must be >= 0, got -1"),
    (["--workers", "a"], "--workers must be an integer, got 'a'"),
    (["--crop-scale-min", "0"], "--crop-scale-min must be > 0, got 0.0"),
    (["--crop-scale-min", "1.5"], "--crop-scale-min is out of range: 1.5"),
    (["--max-steps", "0"], "--max-steps must be >= 1, got 0"),
    (["--per-device-batch", "0"], "--per-device-batch must be >= 1, got 0"),
    (["--seed", str(10**20)], "--seed is out of range"),
])
def test_an_out_of_range_train_option_is_an_option_error(tmp_path, args, msg):
    code, out = run("train", DEMO, "-o", tmp_path / "r", *args)
    assert code == 2 and msg in out and "hint: allowed:" in out, out
    assert "Traceback" not in out and not (tmp_path / "r").exists()


@pytest.mark.parametrize("args, msg", [
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--crop-pct", "2"], "--crop-pct is out of range: 2.0"),
    (["--val-samples", "0"], "--val-samples must be >= 1, got 0"),
])
def test_an_out_of_range_eval_option_is_an_option_error(tmp_path, args, msg):
    code, out = run("eval", "--checkpoint", tmp_path / "nothing", *args)
    assert code == 2 and msg in out, out


def test_check_options_words_a_bad_value_as_the_command_line_does():
    from mfdsl.runner.errors import RunError

    with pytest.raises(RunError, match=r"--workers must be >= 0, got -1 \(hint: allowed: >= 0\)"):
        check_options(TrainOptions(workers=-1))
    with pytest.raises(RunError, match="--inherit-depth must be one of first, repeat"):
        check_options(TrainOptions(inherit_depth="deep"))
    check_options(TrainOptions(inherit=("head=x",), img_size=(64, 48)))


def test_dry_run_only_options_are_refused_without_dry_run(tmp_path):
    code, out = run("train", DEMO, "-o", tmp_path / "r", "--json", "--world-size", "2")
    assert code == 2 and "--json, --world-size only go(es) with --dry-run" in out, out


def test_options_reach_the_run_as_before(tmp_path, monkeypatch):
    """--no-flip, -o, --inherit (repeatable), --img-size and the recipe's --batch-size land
    in TrainOptions as the old hand-written mapping put them."""
    from mfdsl.runner import train

    seen = {}
    monkeypatch.setattr(train, "run_training", lambda spec, opts: seen.setdefault("o", opts))
    code, out = run("train", DEMO, "-o", tmp_path / "r", "--no-flip", "--inherit", "a=x",
                    "--inherit", "y", "--img-size", "64x48", "--batch-size", "8",
                    "--no-compile", "--workers", "0")
    assert code == 0, out
    o = seen["o"]
    assert (o.hflip, o.output, o.inherit, o.img_size, o.batch_size, o.compile, o.workers) == (
        0.0, str(tmp_path / "r"), ("a=x", "y"), (64, 48), 8, False, 0)
    assert o.recipe_overrides == {"batch_size": 8} and o.progress is None


# --- exit codes: one table ---------------------------------------------------------------

@pytest.mark.parametrize("command", ["train", "eval"])
def test_help_lists_the_exit_codes_of_the_table(command):
    from mfdsl.errors import exit_codes_of

    code, out = run(command, "--help")
    assert code == 0
    listed = out.split("Exit codes:")[1].split("Options:")[0]
    codes = [int(line.split()[0]) for line in listed.strip().splitlines()]
    assert codes == [e.code for e in exit_codes_of(command)]
    for e in exit_codes_of(command):
        assert e.meaning in " ".join(listed.split()), e


def test_train_lists_every_exit_code_its_errors_can_end_with():
    import mfdsl.cli.app  # noqa: F401
    import mfdsl.fsio  # noqa: F401
    import mfdsl.runner.preemption  # noqa: F401
    import mfdsl.runner.train  # noqa: F401
    from mfdsl.errors import UserError, exit_codes_of

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    train_codes = {e.code for e in exit_codes_of("train")}
    codes = {c.exit_code for c in subclasses(UserError)}
    assert {3, 74, 75, 130} <= codes <= train_codes
