"""Run options (everything that is not the recipe), declared once.

Each option of ``mfdsl train`` and ``mfdsl eval`` is a field of :class:`TrainOptions` /
:class:`EvalOptions` made by :func:`option`: its value's :class:`~mfdsl.fields.Field`
(type, range, choices) plus how the command line spells and documents it
(:class:`RunOption`). The click options (``cli/generated_options.py``), the dataclass
default, the value check (:func:`check_options`) and the options tables of
``docs/training.md`` (``emit/docs.py``) all read it. A vocabulary like ``ir.py``'s recipe
settings, so it sits as low: the runner that uses the options is far above.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import MISSING, dataclass, field
from typing import Any, Dict, Iterator, Optional, Tuple

from .errors import RunError
from .fields import BOOL, FLOAT, INT, SIZE, STR, Field
from .runs import STATE_EXT, WEIGHTS_EXT

# RandomResizedCrop's smallest area fraction: timm's and the paper's; the embedded data's
# images hold one object-sized shape, which an 8% crop often misses.
CROP_SCALE_MIN = 0.08
EMBEDDED_CROP_SCALE_MIN = 0.35
# More loader processes than cores only adds contention (and a DataLoader warning).
DEFAULT_WORKERS = min(8, os.cpu_count() or 1)


@dataclass(frozen=True)
class RunOption(Field):
    """What one run option means to the user: a :class:`~mfdsl.fields.Field` (what the
    check reads) plus its command-line spelling and documentation.

    ``flag`` is the option's spelling (``--workers``), a pair for a switch with an off
    form (``--compile/--no-compile``), or None for a field the command fills itself (not
    an option). ``flag_value``: a flag without argument that sets this value (``--no-flip``
    sets hflip 0); ``bare_value``: the value of the option given without its argument
    (``--pretrained`` alone). ``default_text`` is the default as help and docs say it when
    it is not the value itself (it depends on the machine, or None means "decided later").
    """

    doc: str = ""
    flag: Optional[str] = None
    short: Optional[str] = None  # a one-letter alias: -o
    metavar: Optional[str] = None
    path: Optional[str] = None  # "any", "dir", "file": a path, checked as click.Path does
    multiple: bool = False  # repeatable; the value is a tuple
    flag_value: Any = None
    bare_value: Any = None
    dry_run_only: bool = False  # only goes with --dry-run
    default_text: Optional[str] = None

    @property
    def name_flag(self) -> Optional[str]:
        """The on spelling (``--compile`` of ``--compile/--no-compile``)."""
        return self.flag.split("/")[0] if self.flag else None

    @property
    def is_switch(self) -> bool:
        """A flag without argument (``--overwrite``, ``--compile/--no-compile``)."""
        return self.type == BOOL or self.flag_value is not None


_OPTION = "mfdsl.option"


def option(default: Any = None, doc: str = "", type: Optional[str] = None, *,
           factory: Any = None, **kw: Any) -> Any:
    """A dataclass field carrying its :class:`RunOption`. ``type`` defaults from the value."""
    if type is None:
        sample = factory() if factory is not None else default
        type = {bool: BOOL, int: INT, float: FLOAT, str: STR}[
            bool if isinstance(sample, bool) else sample.__class__]
    meta = {_OPTION: RunOption(type=type, doc=doc, **kw)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def options_of(cls: type) -> Iterator[Tuple[str, RunOption, Any]]:
    """(field name, RunOption, default) of every declared option of ``cls``, in order."""
    for f in dataclasses.fields(cls):
        meta = f.metadata.get(_OPTION)
        if meta is None:
            continue
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        yield f.name, meta, default


# Options that contradict each other when both are given: (a, b, what each means).
CONTRADICTIONS = (
    ("from_scratch", "init_from", "random weights, or these"),
    ("from_scratch", "inherit", "random weights, or these"),
    ("init_from", "inherit", "both set the starting weights"),
)


def check_options(opts: Any) -> None:
    """Raise :class:`RunError` for a value outside its option's type or range, worded as
    every other range error (``--workers must be >= 0, got -1``), or for two options that
    contradict each other (:data:`CONTRADICTIONS`)."""
    from .checks.values import check_value
    from .errors import SpecError

    flags = {name: meta.name_flag or name for name, meta, _ in options_of(type(opts))}
    for a, b, why in CONTRADICTIONS:
        if getattr(opts, a, None) and getattr(opts, b, None):
            raise RunError(f"{flags[a]} and {flags[b]} contradict each other ({why}); give "
                           "one")

    for name, meta, _ in options_of(type(opts)):
        v = getattr(opts, name)
        values = v if meta.multiple else (v,)
        for one in values:
            if one is None and meta.optional:
                continue
            try:
                check_value(meta, one, meta.name_flag or name, None)
            except SpecError as err:
                raise RunError(err.message + (f" (hint: {err.hint})" if err.hint else "")) \
                    from None


_PARALLEL = ("Start this many processes (one per device) on this machine, like torchrun "
             "--standalone; a failing process's message is the only one.")
_SIZE_DOC = "e.g. 224 or 256x192"


@dataclass
class TrainOptions:
    """Options of ``mfdsl train`` that are not recipe fields, in the order of its help."""

    data: Optional[str] = option(
        None, "Dataset folder: an ImageFolder tree (train/<class>/*, val/<class>/*), a Hugging "
        "Face parquet folder (data/train-*.parquet, data/validation-*) or WebDataset shards "
        "(*-train-NNNN.tar, *-validation-NNNN.tar). Default: the built-in TinyShapes dataset "
        "(generated offline).", STR, optional=True, flag="--data", path="any")
    train_split: str = option("train", "The training split's sub-folder or shard prefix.",
                              flag="--train-split")
    val_split: str = option("val", "The validation split's sub-folder or shard prefix.",
                            flag="--val-split")
    val_samples: Optional[int] = option(
        None, "Validate on this many images spread evenly over the val split (quick runs; "
        "the score is not the full split's). Default: all.", INT, min=1, optional=True,
        flag="--val-samples")
    output: Optional[str] = option(
        None, "Run folder. Default: runs/<model name> (with --resume PATH: the run folder "
        "it belongs to).", STR, optional=True, flag="--output", short="-o", path="dir")
    # Set from the recipe option --batch-size (a RecipeSpec field), not an option of its own.
    batch_size: Optional[int] = option(None, "Global batch; None: the recipe's.", INT, min=1,
                                       optional=True)
    per_device_batch: Optional[int] = option(None, "Micro-batch per process.", INT, min=1,
                                             optional=True, flag="--per-device-batch")
    accum: Optional[int] = option(None, "Gradient accumulation steps.", INT, min=1,
                                  optional=True, flag="--accum")
    img_size: Optional[Tuple[int, int]] = option(
        None, f"Training/eval image size, {_SIZE_DOC} (default: the spec's input size).",
        SIZE, min=8, optional=True, flag="--img-size")
    hflip: float = option(0.5, "No random horizontal flip (flip probability 0 instead of "
                          "0.5).", FLOAT, min=0, max=1, flag="--no-flip", flag_value=0.0)
    crop_scale_min: Optional[float] = option(
        None, f"Smallest RandomResizedCrop area fraction (default {CROP_SCALE_MIN}; "
        f"{EMBEDDED_CROP_SCALE_MIN} on the embedded data).", FLOAT, min=0, min_exclusive=True,
        max=1, optional=True, flag="--crop-scale-min")
    init_from: Optional[str] = option(
        None, "Start from these weights: a run folder (its last checkpoint; adapters merged), a "
        "checkpoint file (mfdsl, timm or official) or a release name, e.g. "
        "caformer_s18.sail_in22k (fetched via the HF cache).",
        STR, optional=True, flag="--init-from")
    inherit: Tuple[str, ...] = option(
        (), "Copy trained parts from SOURCE (release name, run folder or checkpoint) where "
        "role, kind and shape match; PARTS like stage0-1,head. Repeatable; see "
        "docs/training.md.", STR, flag="--inherit", multiple=True, metavar="[PARTS=]SOURCE",
        factory=tuple)
    inherit_depth: str = option(
        "first", "Deeper target stages: extra blocks new, or the source's blocks repeated "
        "cyclically.", choices=("first", "repeat"), flag="--inherit-depth")
    workers: int = option(DEFAULT_WORKERS, "DataLoader worker processes per training process.",
                          min=0, flag="--workers", default_text="CPU cores, at most 8")
    seed: int = option(0, "Random seed.", min=0, max=2**63 - 1, flag="--seed")
    resume: Optional[str] = option(
        None, f"Continue from a checkpoint: a {WEIGHTS_EXT}/{STATE_EXT} file, a run folder, "
        "or 'auto' (the latest in --output).", STR, optional=True, flag="--resume")
    overwrite: bool = option(
        False, "Start a new run in an --output folder that holds an earlier run: its run "
        "files (checkpoints, metrics, run.json ...) are removed first.", flag="--overwrite")
    allow_recipe_change: bool = option(
        False, "With --resume: let recipe values differ from the run's (refused otherwise); "
        "each change is recorded with its step in recipe_changes.jsonl.",
        flag="--allow-recipe-change")
    wait_for_lock: float = option(
        0.0, "If another run holds the --output folder, wait up to this long for it to end "
        "(a requeued job) instead of stopping at once.", min=0, flag="--wait-for-lock",
        metavar="SECONDS")
    max_steps: Optional[int] = option(
        None, "Stop after this many optimizer steps (the schedule is compressed to fit).",
        INT, min=1, optional=True, flag="--max-steps")
    device: str = option("auto", "auto, cpu, cuda, cuda:N.", flag="--device")
    compile: Optional[bool] = option(None, "torch.compile (default: on CUDA).", BOOL,
                                     optional=True, flag="--compile/--no-compile")
    cuda_graphs: bool = option(
        False, "CUDA graphs for the compiled forward/backward (torch.compile "
        "mode=\"reduce-overhead\"): less launch overhead for small per-device batches. CUDA, "
        "one process, compiled only; refused elsewhere (docs/training.md).",
        flag="--cuda-graphs")
    channels_last: Optional[bool] = option(
        None, "channels_last memory format (default: on CUDA).", BOOL, optional=True,
        flag="--channels-last/--no-channels-last")
    amp: Optional[bool] = option(None, "Autocast (default: the recipe's amp, on CUDA only).",
                                 BOOL, optional=True, flag="--amp/--no-amp")
    amp_dtype: str = option("bfloat16", "Autocast dtype.", choices=("bfloat16", "float16"),
                            flag="--amp-dtype")
    nan_policy: str = option("skip", "On a non-finite loss: skip the step, or stop (exit 3).",
                             choices=("skip", "stop"), flag="--nan-policy")
    nan_max_consecutive: int = option(
        5, "With skip: stop after this many non-finite steps in a row.", min=1,
        flag="--nan-max-consecutive")
    keep_recent: int = option(3, "Periodic checkpoints kept besides last and best.", min=0,
                              flag="--keep-recent")
    ckpt_every: int = option(0, "Also checkpoint every N optimizer steps (0: at epoch ends "
                             "only).", min=0, flag="--ckpt-every")
    log_every: int = option(50, "Optimizer steps between log lines / metric records.", min=1,
                            flag="--log-every")
    eval_every: int = option(1, "Epochs between validations.", min=1, flag="--eval-every")
    nproc_per_node: Optional[int] = option(None, _PARALLEL, INT, min=1, optional=True,
                                           flag="--nproc-per-node")
    nnodes: Optional[str] = option(
        None, "Machines in the job: N, or MIN:MAX for an elastic range; run the same command "
        "on each (torchrun's --nnodes, with --rdzv-endpoint and --rdzv-id).", STR,
        optional=True, flag="--nnodes")
    rdzv_endpoint: Optional[str] = option(
        None, "host:port where the machines of a --nnodes job meet (one of them, a free "
        "port there).", STR, optional=True, flag="--rdzv-endpoint")
    rdzv_id: Optional[str] = option(
        None, "The job's name, the same on every machine and every restart (e.g. "
        "$SLURM_JOB_ID): the run lock knows a restarted job by it.", STR, optional=True,
        flag="--rdzv-id")
    max_restarts: int = option(
        0, "Restart this machine's workers up to N times after one fails (torchrun's "
        "--max-restarts); needs --resume auto, so that a restart continues the run.", min=0,
        flag="--max-restarts")
    tensorboard: bool = option(True, "TensorBoard event files in the run folder.",
                               flag="--tensorboard/--no-tensorboard")
    progress: Optional[bool] = option(
        None, "tqdm progress bar (default: when stderr is a terminal).", BOOL, optional=True,
        flag="--progress/--no-progress")
    grad_checkpointing: bool = option(
        False, "Recompute each block's activations in backward instead of keeping them: the "
        "same gradients, less activation memory, ~1/3 more compute.",
        flag="--grad-checkpointing/--no-grad-checkpointing")
    from_scratch: bool = option(
        False, "Start from random weights although the recipe names finetune_from.",
        flag="--from-scratch")
    dry_run: bool = option(
        False, "Print the run plan (data, batch plan, lr schedule, optimizer, augmentation, "
        "EMA, precision, init, deviations from the official recipe) without training or "
        "writing anything.", flag="--dry-run")
    as_json: bool = option(False, "With --dry-run: the plan as JSON.", flag="--json",
                           dry_run_only=True)
    lr_per_step: bool = option(
        False, "With --dry-run --json: also list the lr of every optimizer step (the plan's "
        "schedule record gives any step's).", flag="--lr-per-step", dry_run_only=True)
    dataset_size: Optional[int] = option(
        None, "With --dry-run: plan for this many training images instead of --data.", INT,
        min=1, optional=True, flag="--dataset-size", dry_run_only=True)
    world_size: Optional[int] = option(
        None, "With --dry-run: plan for this many processes (default: --nproc-per-node "
        "times --nnodes, else 1).", INT, min=1, optional=True, flag="--world-size", dry_run_only=True)
    # Filled by the command, not options of their own.
    argv: Tuple[str, ...] = ()
    recipe_overrides: Dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalOptions:
    """Options of ``mfdsl eval``, in the order of its help."""

    checkpoint: Optional[str] = option(
        None, f"Weights: a run folder (its last checkpoint), an mfdsl {WEIGHTS_EXT}, or a "
        "timm/official checkpoint (then SPEC is needed).", STR, optional=True,
        flag="--checkpoint", short="-c", path="any")
    pretrained: Optional[str] = option(
        None, "SPEC's released ImageNet weights (default tag for its size), or a tag "
        "(sail_in22k_ft_in1k) or release name; fetched via the Hugging Face cache.", STR,
        optional=True, flag="--pretrained", bare_value="default", metavar="[TAG|NAME]")
    data: Optional[str] = option(
        None, "ImageFolder root (its --split sub-folder is used if present), or a parquet or "
        "tar shard folder (its --split shards). Default: the built-in TinyShapes val split.",
        STR, optional=True, flag="--data", path="any")
    split: str = option("val", "The split's sub-folder or shard prefix.", flag="--split")
    img_size: Optional[Tuple[int, int]] = option(
        None, f"Evaluate at this size instead of the run's ({_SIZE_DOC}).", SIZE, min=8,
        optional=True, flag="--img-size")
    crop_pct: Optional[float] = option(
        None, "Centre-crop fraction instead of the run's.", FLOAT, min=0, min_exclusive=True,
        max=1, optional=True, flag="--crop-pct")
    batch_size: int = option(128, "Images per batch.", min=1, flag="--batch-size")
    workers: int = option(DEFAULT_WORKERS, "DataLoader worker processes.", min=0,
                          flag="--workers", default_text="CPU cores, at most 8")
    device: str = option("auto", "auto, cpu, cuda, cuda:N.", flag="--device")
    amp: Optional[bool] = option(None, "bf16 autocast (default: on CUDA).", BOOL,
                                 optional=True, flag="--amp/--no-amp")
    channels_last: Optional[bool] = option(
        None, "channels_last memory format (default: on CUDA).", BOOL, optional=True,
        flag="--channels-last/--no-channels-last")
    nproc_per_node: Optional[int] = option(None, _PARALLEL, INT, min=1, optional=True,
                                           flag="--nproc-per-node")
    as_json: bool = option(False, "Print one JSON object.", flag="--json")
    val_samples: Optional[int] = option(
        None, "Evaluate only this many images, spread evenly over the split.", INT, min=1,
        optional=True, flag="--val-samples")
    progress: Optional[bool] = option(
        None, "tqdm progress bar (default: when stderr is a terminal and not --json).", BOOL,
        optional=True, flag="--progress/--no-progress")
    # Not an option: eval autocasts in bfloat16.
    amp_dtype: str = "bfloat16"


