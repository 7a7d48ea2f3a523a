"""``mfdsl train``: a run built from its plan, then its loop.

:func:`run_training` locks the run folder, checks it, joins the process group and then,
in order: opens the data (:mod:`~mfdsl.runner.run_data`), resolves the plan
(:func:`~mfdsl.runner.plan.resolve_plan`, the dry run's), lowers the model once and loads
its starting weights, builds the parts (:mod:`~mfdsl.runner.parts`), restores a resumed
run (:class:`~mfdsl.runner.checkpointer.Checkpointer`), writes the run folder
(:mod:`~mfdsl.runner.run_writer`) and runs the :class:`~mfdsl.runner.loop.Loop` with the
run's hooks. Single process or one process per device under torchrun (DDP); a resume
continues exactly: same weights, optimizer, schedule, RNG streams and data position.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

from .. import fsio, runs
from ..ir import ModelSpec
from . import checkpointing as ckpt
from . import recipe_history
from .checkpointer import Checkpointer, FailedImages
from .distributed import DistEnv, agree_on_failure, barrier, checked_alike_on_every_rank, \
    setup, teardown
from .launch import launched_rank
from .errors import InterruptedRun, RunError
from .hooks import (Checkpoints, Hook, Preemption, Progress, TestFaults, TestKill,
                    TrainMetrics, Validation)
from .loop import Loop, NonFinitePolicy
from .metrics import MetricsLog
from ..run_options import TrainOptions, check_options
from .output import Console
from .parts import Parts, build_parts, load_start_weights, lower_model, train_loader, val_loader
from .plan import RunPlan, check_start_classes, resolve_plan, run_spec
from .preemption import StopWatch, remove_leftover_temporaries, stop_at_boundary
from .run_data import data_root, open_run_data
from .run_folder import OutputPlan, RunContext, clear_run, plan_output, run_folder_of
from .run_lock import RunLock
from .shared_resume import agree_on_resume, output_view
from .run_writer import recipe_record, write_run_end, write_run_start
from .state import TrainState
from .summary import run_summary, summary_line
from .validation import Validator


class RunLog:
    """The run's log lines: printed by rank 0 (above a progress bar, if one is shown); a
    closed stdout degrades to the run folder's log file (:class:`~.output.Console`)."""

    def __init__(self, output: str, is_main: bool) -> None:
        self.console = Console(output) if is_main else None
        self.progress: Optional[Progress] = None

    def __call__(self, msg: str) -> None:
        if self.console is not None:
            self.console.say(msg, self.progress.writer() if self.progress else None)


@dataclass
class TrainingRun:
    """A run ready to train: its plan, parts, state and what acts around the loop."""

    plan: RunPlan
    parts: Parts
    env: DistEnv
    state: TrainState
    output: str
    metrics: MetricsLog
    checkpointer: Checkpointer
    validate: Validator
    loop: Loop
    log: RunLog

    def train(self) -> Dict[str, Any]:
        """Train to the end of the schedule (or --max-steps); returns the run's summary."""
        plan, st, parts, env = self.plan, self.state, self.parts, self.env
        n_params = sum(p.numel() for p in parts.model.parameters()) / 1e6
        self.log(f"training {plan.spec.name}: {n_params:.2f}M params on {env.device} "
                 f"x{env.world_size}; {plan.batch.describe()}; {plan.recipe.optimizer}, lr "
                 f"{plan.schedule.describe()}; {plan.steps_per_epoch} steps/epoch, "
                 f"{plan.total_steps} steps; data {plan.data.describe()}")
        t_start = time.perf_counter()
        self.loop.run()
        if st.last_saved_step != st.step:
            self.checkpointer.save(st)
        final = st.last_val if st.last_val_step == st.step else None
        if final is None and parts.val_set is not None:
            final = self.validate()
        summary = run_summary(plan, st, final, self.checkpointer.folder,
                              time.perf_counter() - t_start)
        if env.is_main:
            curves = write_run_end(self.output, summary, self.metrics.jsonl)
            self.checkpointer.failures.write(st)
            self.metrics.close()
            self.log(summary_line(summary, self.output, curves))
        return summary

    def interrupted_message(self) -> str:
        """What a user stopping the run needs: where it stopped and how to go on."""
        st = self.state
        try:
            latest = self.checkpointer.latest()
        except Exception:  # noqa: BLE001 - the message must not hide the interrupt
            return f"interrupted at step {st.step}"
        if latest is None:
            return f"interrupted at step {st.step}; no checkpoint was written yet"
        return (f"interrupted at step {st.step}; the last checkpoint is {latest} (step "
                f"{ckpt.pair_step(latest)}); continue with --resume auto -o {self.output}")


def run_hooks(plan: RunPlan, state: TrainState, env: DistEnv, opts: TrainOptions,
              checkpointer: Checkpointer, validate: Callable[[], Any], metrics: MetricsLog,
              watch: Optional[StopWatch], output: str, log: RunLog, faults: TestFaults
              ) -> List[Hook]:
    """A run's hooks, in order: test faults and a scheduler's stop before a step; after it
    the bar, then validation before the metrics row that reports it, then checkpoints
    (which keep the best by that validation), and the test kill last."""
    save = lambda: checkpointer.save(state)  # noqa: E731
    shown = opts.progress if opts.progress is not None else sys.stderr.isatty()
    progress = Progress(shown and env.is_main, plan, state, log)
    log.progress = progress
    stop = lambda: stop_at_boundary(watch, env, state, save, checkpointer.latest,  # noqa: E731
                                    output, log)
    return [faults, Preemption(stop), progress, Validation(validate, plan, state,
                                                           opts.eval_every),
            TrainMetrics(metrics, progress, plan, state, opts.log_every, log),
            Checkpoints(save, plan, state, opts.ckpt_every), TestKill()]


def build_run(spec: ModelSpec, opts: TrainOptions, env: DistEnv, out: OutputPlan,
              watch: Optional[StopWatch], extra_hooks: Sequence[Hook] = ()) -> TrainingRun:
    """Everything a run needs, built from its plan before the first step."""
    log = RunLog(out.output, env.is_main)
    prior = out.prior
    spec = run_spec(spec, opts, out)
    ckpt.seed_everything(opts.seed + env.rank)
    if opts.data is None:
        if env.is_main:
            data_root(None)  # rank 0 generates the built-in data; the others find it whole
        barrier(env)
    data = open_run_data(opts.data, opts.train_split, opts.val_split,
                         num_classes=spec.num_classes,
                         classes=prior.classes if prior is not None else None)
    plan = resolve_plan(spec, opts, data.plan, world_size=env.world_size, device=env.device,
                        resuming=out.resume_stem is not None)
    check_start_classes(plan, data.train.classes if data.train is not None else None)
    for line in out.notes + data.notes + plan.notes + plan.deviation_lines():
        log(line)
    model = lower_model(plan)
    inheritance = load_start_weights(model, plan, opts, log)
    parts = build_parts(plan, data, env, model, grad_checkpointing=opts.grad_checkpointing)
    context = RunContext.of(plan.spec, data.train.classes,
                            run_id=prior.run_id if prior is not None else None)
    if prior is not None:
        context.spec_mf = prior.spec_mf
    ckpt_dir = runs.checkpoints_dir(out.output)
    failures = FailedImages(out.output, env)
    writer = (ckpt.CheckpointWriter(ckpt_dir, opts.keep_recent, context.to_json())
              if env.is_main else None)
    checkpointer = Checkpointer(parts, plan, env, ckpt_dir, writer, failures, opts.seed, log)
    record = recipe_record(plan, parts, context, opts)
    state, diff, stem = TrainState(), {}, out.resume_stem
    if opts.resume is not None and stem is None:
        log(f"note: --resume auto: no complete checkpoint in {ckpt_dir}, starting fresh")
    if stem is not None:
        # Refused (naming each difference) before anything is loaded or written.
        diff = recipe_history.check_resume(run_folder_of(stem + ckpt.WEIGHTS_EXT)
                                           or out.output, record, opts.allow_recipe_change)
        state = checkpointer.restore(stem, diff)
    metrics = MetricsLog(out.output, env.is_main, opts.tensorboard)
    try:
        if env.is_main and opts.resume is None and opts.overwrite:
            removed = clear_run(out.output, out.inputs)
            if removed:
                log(f"note: --overwrite: removed the earlier run's {', '.join(removed)} "
                    f"from {out.output}")
        metrics.open(resume_step=state.step if stem is not None else None)
        if env.is_main:
            write_run_start(out, plan, context, record, diff, opts, env, inheritance,
                            state.step, log)
    except fsio.WriteError:
        raise  # already names the file and what was kept
    except OSError as exc:
        # Say which option is at fault: a bare "[Errno 20] Not a directory" does not.
        raise RunError(f"--output {out.output}: cannot write the run folder: "
                       f"{exc.strerror or exc}") from None
    shown = opts.progress if opts.progress is not None else sys.stderr.isatty()
    validate = Validator(parts, env, state, metrics, lambda: val_loader(
        parts, plan, env, workers=opts.workers, seed=opts.seed,
        val_samples=opts.val_samples), shown, log)
    faults = TestFaults(env.is_main)
    hooks = run_hooks(plan, state, env, opts, checkpointer, validate, metrics, watch,
                      out.output, log, faults) + list(extra_hooks)
    nonfinite = NonFinitePolicy(opts.nan_policy, opts.nan_max_consecutive, metrics,
                                checkpointer.last_good, log)
    loop = Loop(plan, parts, env, state, hooks, lambda epoch, micro: train_loader(
        parts, plan, env, epoch=epoch, micro=micro, workers=opts.workers, seed=opts.seed),
        failures, nonfinite, faults.nan_loss, opts.log_every)
    return TrainingRun(plan, parts, env, state, out.output, metrics, checkpointer, validate,
                       loop, log)


def run_training(spec: ModelSpec, opts: TrainOptions, hooks: Sequence[Hook] = ()
                 ) -> Dict[str, Any]:
    """Set up the process group (if under torchrun), train, tear down. Returns the summary.
    ``hooks``: more hooks for the loop, after the run's own."""
    check_options(opts)  # before the run folder is locked: a bad option touches nothing
    # One writer per run folder: the (global) rank-0 process locks it for the run's life,
    # before the folder is checked, so nothing can change between check and first write.
    lock = None
    if launched_rank() == 0:
        lock = RunLock(opts.output or os.path.join("runs", spec.name)).acquire(
            " ".join(opts.argv or sys.argv), wait=opts.wait_for_lock)
    watch = None
    try:
        out, env, watch = _plan_and_setup(spec, opts, lock)
        return _train_in(spec, opts, env, out, watch, hooks)
    finally:
        if watch is not None:
            watch.restore()
        if lock is not None:
            lock.release()


def _plan_and_setup(spec: ModelSpec, opts: TrainOptions, lock: Optional[RunLock]):
    """Check the run folder, clean up interrupted writes, join the process group, agree
    on the resume checkpoint."""
    # The run folder is checked before the process group exists: under torchrun every rank
    # sees the same folder and refuses alike, and only rank 0 says so.
    with checked_alike_on_every_rank():
        out = plan_output(spec, output_view(opts.output or os.path.join("runs", spec.name)),
                          opts.resume, opts.overwrite, opts.img_size,
                          [spec.source, opts.init_from])
    if lock is not None:
        notes = list(lock.notes)
        removed, freed = remove_leftover_temporaries(out.output)
        if removed:
            notes.append(f"note: removed {len(removed)} temporary file(s) of interrupted "
                         f"writes ({freed / 1e6:.1f} MB) from {out.output}")
        out.notes[:0] = notes
    env = setup(opts.device)
    # Each rank planned its resume alone: from here on they share rank 0's pick (or refuse).
    out = agree_on_resume(env, out)
    # Installed before the DataLoader workers are forked: they inherit a handler that only
    # sets a flag, so a SIGTERM sent to the whole job does not kill them mid-step.
    return out, env, StopWatch(distributed=env.distributed)


def _train_in(spec: ModelSpec, opts: TrainOptions, env: DistEnv, out: OutputPlan,
              watch: StopWatch, hooks: Sequence[Hook]) -> Dict[str, Any]:
    run = None
    try:
        failure: Optional[BaseException] = None
        try:
            run = build_run(spec, opts, env, out, watch, hooks)
        except Exception as exc:  # noqa: BLE001 - re-raised by agree_on_failure
            failure = exc
        # One rank's setup error stops every rank, and one message is printed.
        agree_on_failure(env, failure)
        assert run is not None
        try:
            summary = run.train()
        except KeyboardInterrupt:
            err = InterruptedRun(run.interrupted_message())
            err.quiet = not env.is_main  # one message, not one per rank
            raise err from None
        # Leave together: a rank tearing gloo down while rank 0 still writes the summary
        # and plot can abort ("terminate called without an active exception").
        barrier(env)
        return summary
    finally:
        if run is not None and env.is_main:
            run.metrics.close()
        teardown()
