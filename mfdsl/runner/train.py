"""The training loop behind ``mfdsl train``: data, model, optimizer, checkpoints, logging.

Single process or one process per device under torchrun (DDP). Resuming from a checkpoint
continues exactly: same weights, optimizer, schedule, RNG streams and data position.
"""
from __future__ import annotations

import os
import random
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn

from ..ckptformats.weights import LoadReport
from ..ir import ModelSpec, with_overrides
from . import checkpointing as ckpt
from .device_plan import resolve_device_plan
from .distributed import (DistEnv, agree_on_failure, any_rank, barrier,
                          checked_alike_on_every_rank, gather_objects, setup, teardown)
from .errors import DataError, InterruptedRun, NonFiniteLossError, RunError
from .evaluate import evaluate
from ..data.dataset import (BatchPreprocess, ResumableDistributedSampler, ShardSampler,
                          SourceDataset, UnknownClassError, UnreadableImages,
                          eval_transform, make_loader, spread_subset, train_transform)
from ..data.layout import detect_layout, open_source
from .metrics import MetricsLog, format_duration, pct, plot_curves
from .optim import create_optimizer
from .plan import build_plan, deviation_lines, finetune_source, plan_steps
from .schedule import schedule_for
from .options import (EMBEDDED_CROP_SCALE_MIN, BatchPlan, TrainOptions, apply_recipe_overrides,
                      recipe_as_dict, scaled_lr)
from .. import fsio, runs
from . import recipe_history
from ..analysis.batch_stats import check_training_batch
from .output import Console
from .hooks import (Checkpoints, EpochEnd, Preemption, Progress, Reads, StepEnd, TestFaults,
                    TestKill, TrainMetrics, Validation)
from .preemption import StopWatch, remove_leftover_temporaries
from .run_lock import RunLock
from .run_folder import (MANIFEST, OutputPlan, RunContext, clear_run, environment,
                         plan_output, record_run_files, run_folder_of, spec_text, write_json)
from .state import SavedParts, TrainState
from .step import StepLog, StepParts, train_step, uncount_skipped_steps

class Trainer:
    def __init__(self, spec: ModelSpec, opts: TrainOptions, env: DistEnv,
                 plan: Optional[OutputPlan] = None) -> None:
        self.opts = opts
        self.env = env
        self.log_file = None
        if plan is None:
            plan = plan_output(spec, opts.output, opts.resume, opts.overwrite, opts.img_size,
                               [spec.source, opts.init_from])
        self.out_plan = plan
        self._setup_data_roots()
        spec = apply_recipe_overrides(spec, recipe_history.resume_overrides(
            plan.resume_stem, plan.output, opts.recipe_overrides))  # the run's current recipe
        if plan.prior is not None:
            # A resumed run keeps its context: input size and eval transform.
            spec = plan.prior.apply(spec)
        elif opts.img_size is not None:
            spec = with_overrides(spec, img_size=tuple(opts.img_size))
        self.spec = spec
        self.recipe = spec.recipe
        self._seed_everything(opts.seed + env.rank)
        from ..api import build_model

        # Device, layout, dtype, compilation and speed variants, decided once; the model
        # is lowered once, with the variants this device runs.
        self.device_plan = resolve_device_plan(
            env.device, spec.recipe, amp=opts.amp, amp_dtype=opts.amp_dtype,
            channels_last=opts.channels_last, compile=opts.compile)
        self.model = build_model(spec, variants=self.device_plan.variants)  # SpecError -> CLI
        if opts.init_from and opts.inherit:
            raise RunError("--init-from and --inherit both set the starting weights; give one")
        if opts.init_from:
            self._start_from(opts.init_from, "--init-from")
        elif (self.recipe.finetune_from and not opts.inherit and plan.resume_stem is None
              and not opts.from_scratch):
            # A fine-tune recipe starts from what it names, never silently from random init.
            source = finetune_source(self.recipe.finetune_from)
            self.log(f"fine-tuning from {source} (the recipe's finetune_from "
                     f"{self.recipe.finetune_from}; --from-scratch for random init)")
            self._start_from(source, "finetune_from")
        self.inheritance = None
        if opts.inherit:
            from ..weights import inherit

            self.inheritance = inherit(self.model, opts.inherit, opts.inherit_depth)
            self.log("inherited weights:\n" + self.inheritance.table())
        self._setup_datasets()
        self._setup_batches()
        try:  # batchnorm on pooled features cannot train on one image per device
            check_training_batch(self.model, self.plan.per_device, "--per-device-batch")
        except ValueError as exc:
            raise RunError(str(exc)) from None
        self._setup_device_and_model()
        self._setup_optim()
        self.run_plan = build_plan(
            self.spec, opts, dataset_size=len(self.train_set), world_size=env.world_size,
            device_type=env.device.type, data=self.data_root, embedded=self.embedded,
            crop_scale_min=self.crop_scale_min, precision=self.target["dtype"])
        for line in deviation_lines(self.run_plan):
            self.log(line)
        self.state = TrainState()
        self.output = plan.output
        self.ckpt_dir = runs.checkpoints_dir(self.output)
        prior = plan.prior
        self.context = RunContext.of(self.spec, self.train_set.classes,
                                     run_id=prior.run_id if prior else None)
        if prior is not None:
            self.context.spec_mf = prior.spec_mf
        resume_stem = self._find_resume()
        for note in plan.notes:
            self.log(note)
        self.recipe_diff: Dict[str, Any] = {}
        if resume_stem is not None:
            # Refused (naming each difference) before anything is loaded or written.
            self.recipe_diff = recipe_history.check_resume(
                run_folder_of(resume_stem + ckpt.WEIGHTS_EXT) or self.output,
                self._recipe_record(), opts.allow_recipe_change)
            self._load_resume(resume_stem)
        try:
            if env.is_main and opts.resume is None and opts.overwrite:
                removed = clear_run(self.output, plan.inputs)
                if removed:
                    self.log(f"note: --overwrite: removed the earlier run's "
                             f"{', '.join(removed)} from {self.output}")
            self.metrics = MetricsLog(self.output, env.is_main, opts.tensorboard,
                                      resume_step=self.state.step if resume_stem else None)
            self.writer = (ckpt.CheckpointWriter(self.ckpt_dir, opts.keep_recent,
                                                 self.context.to_json())
                           if env.is_main else None)
            if env.is_main:
                self._write_run_folder(resume_stem)
        except fsio.WriteError:
            raise  # already names the file and what was kept
        except OSError as exc:
            # Say which option is at fault: a bare "[Errno 20] Not a directory" does not.
            raise RunError(f"--output {self.output}: cannot write the run folder: "
                           f"{exc.strerror or exc}") from None
        # What the loop does around its steps (mfdsl.runner.hooks), in this order: test
        # faults and a scheduler's stop before a step; after it the bar, then validation
        # before the metrics row that reports it, then checkpoints (which keep the best
        # by that validation), and the test kill last.
        self.faults = TestFaults(self)
        self.progress = Progress(self)
        self.hooks = [self.faults, Preemption(self), self.progress, Validation(self),
                      TrainMetrics(self, self.progress), Checkpoints(self), TestKill(self)]

    # ------------------------------------------------------------------ setup
    def _start_from(self, source: str, option: str) -> None:
        """Load the starting weights ``source`` names (a file, a run folder, a release)."""
        from ..ckptformats.weights import CheckpointError
        from ..weights import load_weights
        from ..weights.sources import require_weights

        found = require_weights(source, option, RunError, spec=self.spec)
        try:
            report = load_weights(self.model, found.ref, self.spec)
        except CheckpointError as exc:
            if exc.report is None:
                raise
            # The library's advice (strict=False) is for Python callers; say the option.
            raise CheckpointError(
                exc.report.summary("does not fit the model; nothing was loaded")
                + f"\n  ({option} needs weights of this architecture; --inherit takes the "
                "parts of another model that fit)") from None
        self.log(f"starting weights: {report.source} ({len(report.loaded)} tensors, "
                 f"{report.format} layout)")

    def _setup_data_roots(self) -> None:
        opts = self.opts
        self.embedded = opts.data is None
        if self.embedded:
            from ..data.tinyshapes import ensure_tinyshapes

            # Rank 0 generates; the others wait and then find it complete.
            if self.env.is_main:
                root = ensure_tinyshapes()
            barrier(self.env)
            root = ensure_tinyshapes()
            self.data_root = str(root)
        else:
            if not os.path.isdir(opts.data):
                raise DataError(f"--data {opts.data}: no such folder")
            self.data_root = opts.data
        # The data's form (ImageFolder tree, parquet or tar shards): mfdsl.data.layout.
        self.layout = detect_layout(self.data_root, (opts.train_split, opts.val_split))
        self.train_dir = self.layout.where(opts.train_split)
        if self.train_dir is None:
            raise DataError(f"--data {self.data_root}: no '{opts.train_split}' split (found "
                            f"{self.layout.describe()}; expected {opts.train_split}/<class>/"
                            f"<images> and optionally {opts.val_split}/<class>/<images>, or "
                            "shards of both splits)")
        self.val_dir = self.layout.where(opts.val_split)

    def _seed_everything(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def _setup_datasets(self) -> None:
        spec, r = self.spec, self.recipe
        if spec.in_chans != 3:
            raise RunError(f"image folders give RGB images; the spec wants {spec.in_chans} "
                           "input channels")
        ev = spec.eval
        # TinyShapes images hold one object-sized shape: an 8% crop often misses it.
        self.crop_scale_min = (self.opts.crop_scale_min if self.opts.crop_scale_min is not None
                               else EMBEDDED_CROP_SCALE_MIN if self.embedded else 0.08)
        if not 0 < self.crop_scale_min <= 1:
            raise RunError(f"--crop-scale-min must be in (0, 1], got {self.crop_scale_min}")
        # The workers lay the uint8 images out as the model runs (no transposing later).
        self.channels_last = self.device_plan.channels_last
        self.train_set = SourceDataset(
            open_source(self.layout, self.opts.train_split),
            train_transform(r, spec.img_size, ev.mean, ev.std, self.opts.hflip,
                            self.crop_scale_min, self.channels_last))
        prior = self.out_plan.prior
        if prior is not None and self.train_set.classes != prior.classes:
            raise DataError(_class_mismatch(self.train_dir, self.train_set.classes,
                                            prior.classes))
        # Labels are positions in the training classes: a val folder may lack a class
        # (noted; the other labels stay right), but one the model was not trained on is an
        # error.
        self.val_set = None
        if self.val_dir:
            try:
                self.val_set = SourceDataset(
                    open_source(self.layout, self.opts.val_split, self.train_set.classes),
                    eval_transform(self.model, self.channels_last))
            except UnknownClassError as exc:
                raise DataError(f"{exc.message}; the class list is that of the training "
                                f"split {self.train_dir}") from None
        for ds in (self.train_set, self.val_set):
            for note in (ds.notes if ds is not None else [])[:5]:
                self.log(f"note: {ds.root}: {note}")
        if self.val_set is not None and self.val_set.missing_classes:
            miss = self.val_set.missing_classes
            self.log(f"note: {self.val_dir} has no folder for {len(miss)} of the "
                     f"{len(self.train_set.classes)} training classes "
                     f"({', '.join(map(repr, miss[:5]))}{' ...' if len(miss) > 5 else ''})")
        n_cls = len(self.train_set.classes)
        if n_cls > spec.num_classes:
            raise DataError(f"the training data has {n_cls} classes but the spec's head has "
                            f"num_classes {spec.num_classes}")
        self._unreadable_pending = UnreadableImages("train")
        self._epoch_unreadable = UnreadableImages("train")
        if n_cls < spec.num_classes:
            self.log(f"note: {n_cls} class folders for a {spec.num_classes}-class head")

    def _setup_batches(self) -> None:
        r = self.recipe
        # The same derivation as the dry run's plan (mfdsl.runner.plan).
        plan, self.micro_per_epoch, self.steps_per_epoch, notes = plan_steps(
            r, self.opts, self.env.world_size, len(self.train_set), self.embedded)
        for note in notes:
            self.log(note)
        self.plan: BatchPlan = plan
        self.mixup_active = r.mixup > 0 or r.cutmix > 0
        if self.mixup_active and plan.per_device % 2:
            raise RunError(f"mixup/cutmix need an even per-device batch, got {plan.per_device}"
                           " (change --batch-size/--per-device-batch, or --no-mixup --no-cutmix)")
        self.lr = scaled_lr(r, plan.global_batch)
        if self.opts.max_steps is not None and self.opts.max_steps < 1:
            raise RunError("--max-steps must be >= 1")
        # A shortened run (--max-steps) keeps the schedule's shape, compressed into it.
        self.schedule = schedule_for(r, self.lr, self.steps_per_epoch, self.opts.max_steps)
        self.total_steps = self.schedule.total_steps
        self.total_epochs = self.schedule.total_epochs

    def _setup_device_and_model(self) -> None:
        from ..target.prepare import compile_for_target

        env, dp = self.env, self.device_plan
        cuda = env.device.type == "cuda"
        self.amp = dp.amp
        self.amp_dtype = dp.torch_amp_dtype
        self.use_compile = dp.compile

        def ddp(m: nn.Module) -> nn.Module:
            from torch.nn.parallel import DistributedDataParallel as DDP

            return DDP(m, device_ids=[env.device.index] if cuda else None)

        if self.opts.grad_checkpointing:  # before compiling: dynamo traces the checkpoints
            self.model.set_grad_checkpointing(True)
        self.target = dp.target()
        # The one device preparation (mfdsl.target.prepare): the same code on CPU and CUDA.
        # The variants were lowered in for this plan: kept, not chosen again.
        self.forward_model = compile_for_target(
            self.model, mode=dp.mode, wrap=ddp if env.distributed else None,
            variants="keep", **self.target)
        self.model = self.forward_model.model
        self.ddp = self.forward_model.wrapped
        # The device-side half of the input pipeline: workers send uint8 images; this
        # normalises and erases them on the device, in the model's memory format.
        self.train_prep = BatchPreprocess.for_transform(self.train_set.transform, env.device,
                                                        self.channels_last)

    def _setup_optim(self) -> None:
        from ..target.prepare import compile_for_target

        r = self.recipe
        self.optimizer = create_optimizer(self.model, r, self.lr)
        fp16 = self.amp and self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.env.device.type, enabled=fp16) if fp16 else None
        self.mixup = None
        if self.mixup_active:
            from timm.data import Mixup
            from timm.loss import SoftTargetCrossEntropy

            self.mixup = Mixup(mixup_alpha=r.mixup, cutmix_alpha=r.cutmix, prob=1.0,
                               switch_prob=r.mixup_switch_prob, mode="batch",
                               label_smoothing=r.label_smoothing,
                               num_classes=self.spec.num_classes)
            self.criterion: nn.Module = SoftTargetCrossEntropy()
        elif r.label_smoothing > 0:
            from timm.loss import LabelSmoothingCrossEntropy

            self.criterion = LabelSmoothingCrossEntropy(smoothing=r.label_smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()
        self.ema = None
        if r.ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=r.ema)
            # EMA weights are evaluated eager (one compiled model is enough to pay for).
            self.ema_eval = compile_for_target(self.ema.module, mode="eager", **self.target)
        self.step_parts = StepParts(self.forward_model, self.model, self.optimizer,
                                    self.criterion, self.plan.accum, r.clip_grad, self.scaler,
                                    self.ema, self.ddp)
        # Per-step records stay on the device until a log step or checkpoint reads them.
        self.step_log = StepLog(self.env.device, min(max(1, self.opts.log_every), 1024))
        self.best_metric = "ema_top1" if self.ema is not None else "top1"

    # ------------------------------------------------------------------ resume
    def _find_resume(self) -> Optional[str]:
        if self.opts.resume is None:
            return None
        stem = self.out_plan.resume_stem
        if stem is None:
            self.log(f"note: --resume auto: no complete checkpoint in {self.ckpt_dir}, "
                     "starting fresh")
        return stem

    def _load_resume(self, stem: str) -> None:
        st, saved = TrainState.from_checkpoint(ckpt.load_state(stem + ckpt.STATE_EXT))
        weights = ckpt.load_weights_file(stem + ckpt.WEIGHTS_EXT)
        mismatch = "\n".join(LoadReport.compare(self.model.state_dict(), weights).problems(8))
        if mismatch:
            raise RunError(f"checkpoint {stem}{ckpt.WEIGHTS_EXT} was made for a different "
                           f"model than this spec builds:\n{mismatch}")
        try:
            self.model.load_state_dict(weights, strict=True)
        except RuntimeError as exc:
            raise RunError(f"checkpoint {stem}{ckpt.WEIGHTS_EXT} does not match this spec: "
                           f"{str(exc).splitlines()[0]} ...") from None
        diff = getattr(self, "recipe_diff", {})
        if recipe_history.optimizer_changed(diff):
            self.log(f"note: --allow-recipe-change: the optimizer changes "
                     f"({diff['recipe.optimizer'][0]} -> {diff['recipe.optimizer'][1]}); its "
                     "state (moments) starts fresh at this step")
        else:
            # The new recipe's hyperparameters (weight decay, betas, ...) win over the saved
            # ones; unchanged, they are equal.
            fresh = [{k: v for k, v in g.items() if k != "params"}
                     for g in self.optimizer.param_groups]
            try:
                if saved.optimizer is None:
                    raise KeyError("optimizer")
                self.optimizer.load_state_dict(saved.optimizer)
            except (ValueError, KeyError) as exc:
                raise RunError(f"optimizer state in {stem}{ckpt.STATE_EXT} does not fit: "
                               f"{exc}") from None
            if diff:
                for g, f in zip(self.optimizer.param_groups, fresh):
                    g.update(f)
        if self.scaler is not None and saved.scaler:
            self.scaler.load_state_dict(saved.scaler)
        if self.ema is not None:
            if saved.ema is not None:
                self.ema.module.load_state_dict(saved.ema)
            else:
                self.ema.set(self.model)
        self.state = st
        same_layout = saved.same_layout(self.env.world_size, self.plan.per_device,
                                        self.plan.accum)
        rngs = saved.rng
        if same_layout and len(rngs) == self.env.world_size:
            ckpt.restore_rng(rngs[self.env.rank])
        else:
            if st.micro:
                self.log("note: the batch layout differs from the checkpoint's: the data "
                         f"position restarts at the beginning of epoch {st.epoch + 1}")
            st.micro = 0
            self._seed_everything(self.opts.seed + self.env.rank + 1000003 * st.step)
        self.log(f"resumed from {stem} (step {st.step}, epoch {st.epoch + 1}, "
                 f"{st.micro} micro-batches into it)")

    def interrupted_message(self) -> str:
        """What a user stopping the run needs: where it stopped and how to go on."""
        st = self.state
        try:
            latest = ckpt.find_latest(self.ckpt_dir) if os.path.isdir(self.ckpt_dir) else None
        except Exception:  # noqa: BLE001 - the message must not hide the interrupt
            return f"interrupted at step {st.step}"
        if latest is None:
            return f"interrupted at step {st.step}; no checkpoint was written yet"
        return (f"interrupted at step {st.step}; the last checkpoint is {latest} (step "
                f"{ckpt.pair_step(latest)}); continue with --resume auto -o {self.output}")

    # ------------------------------------------------------------------ run folder
    def _write_run_folder(self, resume_stem: Optional[str]) -> None:
        os.makedirs(self.output, exist_ok=True)
        name, text = spec_text(self.spec)
        spec_path = os.path.join(self.output, name)
        if any(fsio.same_file(spec_path, src) for src in self.out_plan.inputs):
            self.log(f"note: {spec_path} is the spec file you gave; it is left as it is "
                     f"(the run's canonical spec is in {os.path.join(self.output, runs.RUN_FILE)})")
        elif not os.path.lexists(spec_path):
            # Never rewritten: a resumed run keeps the spec it was started with.
            fsio.write_atomic(spec_path, text, links=fsio.INTERNAL)
        if resume_stem is None or not os.path.lexists(os.path.join(self.output, MANIFEST)):
            record_run_files(self.output, self.context.run_id)  # what --overwrite may remove
        write_json(os.path.join(self.output, runs.RUN_FILE), self.context.to_json())
        recipe_file = os.path.join(self.output, recipe_history.RECIPE_FILE)
        if resume_stem is None or not os.path.lexists(recipe_file):
            write_json(recipe_file, self._recipe_record())
        # A resume never rewrites the run's recipe: a change is appended, with its step.
        recipe_history.record(self.output, self.state.step, self.recipe_diff,
                              list(self.opts.argv or sys.argv))
        # The resolved run, as `mfdsl train --dry-run --json` prints it.
        write_json(os.path.join(self.output, runs.PLAN_FILE), self.run_plan.to_json())
        env = environment(self.opts.argv or sys.argv, self.env.world_size, self.env.device)
        env["resumed_from"] = resume_stem
        write_json(os.path.join(self.output, runs.ENVIRONMENT_FILE), env)
        if self.inheritance is not None and resume_stem is None:
            write_json(os.path.join(self.output, runs.INHERITANCE_FILE),
                       self.inheritance.as_json())

    def _recipe_record(self) -> Dict[str, Any]:
        """recipe.json: the recipe and what was derived from it for this run."""
        p = self.plan
        return {
            "recipe": recipe_as_dict(self.recipe),
            "resolved": {
                "global_batch": p.global_batch, "per_device_batch": p.per_device,
                "accum": p.accum, "world_size": p.world_size, "lr": self.lr,
                "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
                "warmup_steps": self.schedule.warmup_steps, "img_size": list(self.spec.img_size),
                "amp": self.amp, "amp_dtype": self.opts.amp_dtype if self.amp else None,
                "channels_last": self.channels_last,
                "compile": self.use_compile,
                "grad_checkpointing": self.opts.grad_checkpointing,
                "mixup_active": self.mixup_active, "loss": type(self.criterion).__name__,
                "data": self.data_root, "embedded_data": self.embedded,
                "train_images": len(self.train_set),
                "val_images": len(self.val_set) if self.val_set else 0,
                "classes": len(self.train_set.classes), "seed": self.opts.seed,
                "model_fingerprint": self.context.model,
                "nan_policy": self.opts.nan_policy, "crop_scale_min": self.crop_scale_min,
                "hflip": self.opts.hflip,
            },
        }

    # ------------------------------------------------------------------ helpers
    def log(self, msg: str) -> None:
        if self.env.is_main:
            progress = getattr(self, "progress", None)
            bar = progress.bar if progress is not None else None
            if not hasattr(self, "console"):  # a closed stdout degrades to the run's log
                self.console = Console(self.out_plan.output)
            self.console.say(msg, bar.write if bar is not None else None)

    def _loader(self, epoch: int, micro: int):
        sampler = ResumableDistributedSampler(self.train_set, self.env.world_size,
                                              self.env.rank, seed=self.opts.seed)
        sampler.set_position(epoch, micro * self.plan.per_device)
        return make_loader(self.train_set, sampler, self.plan.per_device, self.opts.workers,
                           self.opts.seed + epoch, drop_last=True,
                           pin_memory=self.env.device.type == "cuda")

    def _val_loader(self):
        sampler = ShardSampler(len(self.val_set), self.env.rank, self.env.world_size,
                               spread_subset(len(self.val_set), self.opts.val_samples))
        return make_loader(self.val_set, sampler, self.plan.per_device, self.opts.workers,
                           self.opts.seed, drop_last=False,
                           pin_memory=self.env.device.type == "cuda")

    def validate(self) -> Optional[Dict[str, Any]]:
        if self.val_set is None:
            return None
        opts = self.opts
        bar = (opts.progress if opts.progress is not None else sys.stderr.isatty()) \
            and self.env.is_main
        res = evaluate(self.forward_model, self._val_loader(), self.env, progress=bar)
        if self.ema is not None:
            ema_res = evaluate(self.ema_eval, self._val_loader(), self.env, progress=bar,
                               desc="val (EMA)")
            res["ema_top1"], res["ema_top5"] = ema_res["top1"], ema_res["top5"]
        st = self.state
        st.last_val, st.last_val_step = res, st.step
        st.unreadable_val.merge(res["skipped_files"])
        self.metrics.write("val", st.step, epoch=st.epoch, top1=res["top1"], top5=res["top5"],
                           loss=res["loss"], img_s=res["img_s"],
                           skipped_images=res["skipped_images"],
                           **({"ema_top1": res["ema_top1"]} if self.ema is not None else {}))
        extra = f", EMA top-1 {res['ema_top1']:.2f}%" if self.ema is not None else ""
        self.log(f"val @ step {st.step}: top-1 {res['top1']:.2f}%  top-5 {pct(res['top5'])}  "
                 f"loss {res['loss']:.4f}  ({res['images']} images, {res['img_s']:.0f} img/s)"
                 + extra)
        if res["skipped_images"]:
            self.log("val: skipped " + UnreadableImages("val", res["skipped_files"]).describe())
        return res

    def _weights_finite(self) -> bool:
        bad = any(not torch.isfinite(p).all() for p in self.model.parameters())
        return not any_rank(self.env, bad)

    def _merge_unreadable(self, into: List[UnreadableImages]) -> None:
        """Merge every rank's training failures since the last call into ``into`` (all
        ranks take part)."""
        for files in gather_objects(self.env, self._unreadable_pending.state()):
            for log in into:
                log.merge(files)
        self._unreadable_pending = UnreadableImages("train")

    def _write_unreadable(self) -> None:
        st = self.state
        if self.env.is_main and (len(st.unreadable) or len(st.unreadable_val)):
            # JSON lines: any file name (newlines included) stays on its own line.
            fsio.write_atomic(os.path.join(self.output, runs.SKIPPED_FILE),
                              st.unreadable.jsonl() + st.unreadable_val.jsonl(),
                              links=fsio.INTERNAL)

    def save(self) -> None:
        """Checkpoint the current position (all ranks take part; rank 0 writes)."""
        st = self.state
        self._merge_unreadable([st.unreadable, self._epoch_unreadable])
        if not self._weights_finite():
            raise NonFiniteLossError(
                f"the weights became non-finite by step {st.step}; stopped without saving. "
                f"The last good checkpoint is intact: {self._last_good()}")
        rngs = gather_objects(self.env, ckpt.capture_rng())
        if not self.env.is_main:
            st.last_saved_step = st.step
            agree_on_failure(self.env, None)  # rank 0's write failure stops every rank
            return
        val = st.last_val if st.last_val_step == st.step else None
        # With EMA the EMA model's accuracy selects the best checkpoint (as the official
        # train.py does); best.ema.safetensors then holds the selected weights.
        is_best = val is not None and val[self.best_metric] > st.best_top1
        if is_best:
            st.best_top1 = val[self.best_metric]
        state = st.to_checkpoint(SavedParts(
            optimizer=self.optimizer.state_dict(), schedule=self.schedule.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler is not None else None,
            ema=self.ema.module.state_dict() if self.ema is not None else None,
            rng=rngs, world_size=self.env.world_size, per_device=self.plan.per_device,
            accum=self.plan.accum, global_batch=self.plan.global_batch, seed=self.opts.seed,
            best_by=self.best_metric), val)
        ema_w = self.ema.module.state_dict() if self.ema is not None else None
        failure = None
        try:
            self.writer.save(st.step, st.epoch, self.model.state_dict(), state, is_best, ema_w)
        except fsio.WriteError as exc:
            failure = fsio.WriteError(
                f"{exc}. Training stopped at step {st.step}; the last complete checkpoint is "
                f"{self._last_good()} (continue from it with --resume auto once there is "
                "room)", exc.errno)
        agree_on_failure(self.env, failure)
        st.last_saved_step = st.step
        self._write_unreadable()

    def _last_good(self) -> str:
        stem = ckpt.find_latest(self.ckpt_dir)
        return f"{stem}{ckpt.WEIGHTS_EXT}" if stem else "(none was written yet)"

    # ------------------------------------------------------------------ loop
    def _train_step(self, it) -> float:
        """One optimizer step over ``accum`` micro-batches (mfdsl.runner.step): no host
        reads; its record waits in ``self.step_log``. Returns the lr used."""
        env, st = self.env, self.state
        lr = self.schedule.apply(self.optimizer, st.step)

        def next_batch():
            images, target, failures = next(it)
            self._unreadable_pending.add_batch(self.train_set, failures)
            images, erase = self.train_prep.prepare(images)
            target = target.to(env.device, non_blocking=True)
            if self.mixup is not None:
                images, target = self.mixup(images, target)
            if erase is not None:  # as the official: on the mixed batch
                self.train_prep.erase(images, erase)
            return images, target

        out = train_step(self.step_parts, next_batch, ema_step=st.step,
                         nan_loss=self.faults.nan_loss(st.step + 1))
        self.step_log.record(st.step + 1, out)
        return lr

    def _read_steps(self) -> Reads:
        """Read the kept step records (one host read; one collective under DDP) and apply
        the non-finite policy to them in order."""
        records = self.step_log.read(self.env)
        uncount_skipped_steps(self.optimizer, sum(r[2] for r in records), self.env.device)
        got = Reads()
        for step, nonfinite, _skipped, loss, grad_norm in records:
            got.grad_norm = grad_norm  # the last step's
            if nonfinite:
                self._handle_nonfinite(loss, step)
            else:
                self.state.nan_consecutive = 0
                got.loss_sum += loss
                got.n += 1
        return got

    def _handle_nonfinite(self, loss: float, step: int) -> None:
        st = self.state
        st.nan_skipped += 1
        st.nan_consecutive += 1
        where = f"step {step} (epoch {st.epoch + 1})"
        self.metrics.write("nonfinite", step, epoch=st.epoch, loss=loss,
                           policy=self.opts.nan_policy)
        if self.opts.nan_policy == "stop":
            raise NonFiniteLossError(
                f"non-finite loss/gradient ({loss}) at {where}; stopped (--nan-policy stop). "
                f"The last good checkpoint is intact: {self._last_good()}")
        self.log(f"warning: non-finite loss/gradient ({loss}) at {where}: step skipped "
                 f"({st.nan_consecutive} in a row, {st.nan_skipped} in all)")
        if st.nan_consecutive >= self.opts.nan_max_consecutive:
            raise NonFiniteLossError(
                f"{st.nan_consecutive} non-finite steps in a row (last at {where}); stopped. "
                f"Lower the lr or set clip_grad. The last good checkpoint is intact: "
                f"{self._last_good()}")

    def fit(self) -> Dict[str, Any]:
        """Train to the end of the schedule (or --max-steps); returns the run's summary."""
        env, plan, st, r = self.env, self.plan, self.state, self.recipe
        self.log(f"training {self.spec.name}: {sum(p.numel() for p in self.model.parameters()) / 1e6:.2f}M"
                 f" params on {env.device} x{env.world_size}; {plan.describe()}; "
                 f"{r.optimizer}, lr {self.schedule.describe()}; {self.steps_per_epoch} steps/epoch,"
                 f" {self.total_steps} steps; data {self.data_root} "
                 f"({len(self.train_set)} train / {len(self.val_set) if self.val_set else 0} val)")
        t_start = time.perf_counter()
        hooks = self.hooks
        epoch_micro = self.steps_per_epoch * plan.accum
        self.forward_model.train()
        try:
            while st.epoch < self.total_epochs and st.step < self.total_steps:
                epoch = st.epoch
                it = iter(self._loader(epoch, st.micro))
                self._epoch_unreadable = UnreadableImages("train")
                for h in hooks:
                    h.epoch_start(epoch)
                while st.micro + plan.accum <= epoch_micro and st.step < self.total_steps:
                    for h in hooks:
                        h.step_start(st.step)
                    lr = self._train_step(it)
                    st.micro += plan.accum
                    st.step += 1
                    at = StepEnd(st.step, epoch, lr, mid_epoch=(
                        st.micro < epoch_micro and st.step < self.total_steps))
                    # The host reads the device only when a hook asks (log steps,
                    # checkpoints, the test kill) or the record buffer is full.
                    if self.step_log.full or any(h.reads_at(at) for h in hooks):
                        at.reads = self._read_steps()
                    for h in hooks:
                        h.step_end(at)
                del it
                reads = self._read_steps()
                # Unreadable images: distinct files, merged over ranks (a collective).
                self._merge_unreadable([st.unreadable, self._epoch_unreadable])
                complete = st.micro + plan.accum > epoch_micro
                if complete:
                    st.epoch += 1
                    st.micro = 0
                end = EpochEnd(epoch, complete, reads, self._epoch_unreadable)
                for h in hooks:
                    h.epoch_end(end)
        finally:
            for h in hooks:
                h.close()
        if st.last_saved_step != st.step:
            self.save()
        final = st.last_val if st.last_val_step == st.step else None
        if final is None and self.val_set is not None:
            final = self.validate()
        return self._finish(final, time.perf_counter() - t_start)

    def _finish(self, final: Optional[Dict[str, Any]], elapsed: float) -> Dict[str, Any]:
        st = self.state
        summary = {
            "status": "completed" if st.epoch >= self.total_epochs else "stopped_at_max_steps",
            "steps": st.step, "epochs_completed": st.epoch,
            "final_val": ({k: v for k, v in final.items() if k not in ("skipped_paths", "skipped_files")}
                          if final else None),
            "best_top1": st.best_top1 if st.best_top1 >= 0 else None,
            "best_selected_by": "EMA top-1" if self.ema is not None else "top-1",
            "best_checkpoint": (os.path.join(self.ckpt_dir, runs.BEST + (
                runs.EMA if self.ema is not None else "") + ckpt.WEIGHTS_EXT)
                if st.best_top1 >= 0 else None),
            "skipped_images": len(st.unreadable),
            "skipped_image_fetches": st.unreadable.attempts(),
            "nan_skipped_steps": st.nan_skipped,
            "checkpoint": os.path.join(self.ckpt_dir, runs.LAST + ckpt.WEIGHTS_EXT),
            "seconds": elapsed,
        }
        if self.env.is_main:
            write_json(os.path.join(self.output, runs.SUMMARY_FILE), summary)
            self._write_unreadable()
            self.metrics.close()
            png = plot_curves(self.metrics.jsonl, os.path.join(self.output, runs.CURVES_FILE))
            fv = summary["final_val"]
            self.log(f"done: {st.step} steps in {format_duration(elapsed)}"
                     + (f"; final val top-1 {fv['top1']:.2f}% top-5 {pct(fv['top5'])}" if fv else "")
                     + (f" (EMA top-1 {fv['ema_top1']:.2f}% top-5 {fv['ema_top5']:.2f}%)"
                        if fv and "ema_top1" in fv else "")
                     + (f"; best {summary['best_top1']:.2f}% by {summary['best_selected_by']}: "
                        f"{summary['best_checkpoint']}" if summary["best_checkpoint"] else "")
                     + f"; skipped {len(st.unreadable)} unreadable training image(s)"
                     + (f"; {st.nan_skipped} non-finite step(s) skipped" if st.nan_skipped else "")
                     + f"\nrun folder: {self.output}"
                     + (f" (curves: {os.path.basename(png)})" if png else ""))
        return summary


def _class_mismatch(folder: str, got: List[str], want: List[str]) -> str:
    extra = [c for c in got if c not in set(want)]
    missing = [c for c in want if c not in set(got)]
    what = []
    if missing:
        what.append(f"lacks {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    if extra:
        what.append(f"adds {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")
    return (f"the class folders of {folder} differ from the {len(want)} classes the run was "
            f"trained on ({'; '.join(what) or 'another order'}); a resumed run keeps its "
            "class list (labels are positions in it)")


def run_training(spec: ModelSpec, opts: TrainOptions) -> Dict[str, Any]:
    """Set up the process group (if under torchrun), train, tear down. Returns the summary."""
    if opts.nan_policy not in ("skip", "stop"):
        raise RunError(f"--nan-policy must be skip or stop, got {opts.nan_policy}")
    # One writer per run folder: the (global) rank-0 process locks it for the run's life,
    # before the folder is checked, so nothing can change between check and first write.
    lock = None
    if int(os.environ.get("RANK", "0")) == 0:
        lock = RunLock(opts.output or os.path.join("runs", spec.name)).acquire(
            " ".join(opts.argv or sys.argv), wait=opts.wait_for_lock)
    watch = None
    try:
        plan, env, watch = _plan_and_setup(spec, opts, lock)
        return _train_in(spec, opts, env, plan, watch)
    finally:
        if watch is not None:
            watch.restore()
        if lock is not None:
            lock.release()


def _plan_and_setup(spec: ModelSpec, opts: TrainOptions, lock: Optional[RunLock]):
    """Check the run folder, clean up interrupted writes, join the process group."""
    # The run folder is checked before the process group exists: under torchrun every rank
    # sees the same folder and refuses alike, and only rank 0 says so.
    with checked_alike_on_every_rank():
        plan = plan_output(spec, opts.output, opts.resume, opts.overwrite, opts.img_size,
                           [spec.source, opts.init_from])
    if lock is not None:
        notes = list(lock.notes)
        removed, freed = remove_leftover_temporaries(plan.output)
        if removed:
            notes.append(f"note: removed {len(removed)} temporary file(s) of interrupted "
                         f"writes ({freed / 1e6:.1f} MB) from {plan.output}")
        plan.notes[:0] = notes
    env = setup(opts.device)
    # Installed before the DataLoader workers are forked: they inherit a handler that only
    # sets a flag, so a SIGTERM sent to the whole job does not kill them mid-step.
    return plan, env, StopWatch(distributed=env.distributed)


def _train_in(spec: ModelSpec, opts: TrainOptions, env: DistEnv, plan: OutputPlan,
              watch: StopWatch) -> Dict[str, Any]:
    trainer = None
    try:
        failure: Optional[BaseException] = None
        try:
            trainer = Trainer(spec, opts, env, plan)
        except Exception as exc:  # noqa: BLE001 - re-raised by agree_on_failure
            failure = exc
        # One rank's setup error stops every rank, and one message is printed.
        agree_on_failure(env, failure)
        trainer.stop_watch = watch
        try:
            summary = trainer.fit()
        except KeyboardInterrupt:
            err = InterruptedRun(trainer.interrupted_message())
            err.quiet = not env.is_main  # one message, not one per rank
            raise err from None
        # Leave together: a rank tearing gloo down while rank 0 still writes the summary
        # and plot can abort ("terminate called without an active exception").
        barrier(env)
        return summary
    finally:
        if trainer is not None and env.is_main:
            trainer.metrics.close()
        teardown()
