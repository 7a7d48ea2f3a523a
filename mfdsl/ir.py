"""The typed intermediate representation both front ends lower to.

Every node keeps the source location of each field it was given in ``locs`` (field
name -> Loc; key ``""`` is the node itself). Locations never take part in equality, so
``convert`` round trips compare IR values only.

Defaults are the paper's (MetaFormer Baselines for Vision, Yu et al. 2022): a spec only
states what differs.

Every user-facing field is declared with :func:`setting`: its type, range, choices,
default, documentation, spelling in the languages and command-line flag live here once,
and the ``.mf`` reader and printer, the YAML reader, printer and schema, the range checks,
the recipe's CLI options and the docs' tables derive from it (see docs/internals.md).
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from .errors import Loc
# The value types and Field (type and constraints) live in mfdsl.fields, shared with the
# registry's component arguments; re-exported here for the IR's users.
from .fields import (BOOL, COUNT, FLOAT, FLOAT32_MAX, FLOATS, INT, SIZE, STR,  # noqa: F401
                     Field)

# A component argument: a literal, a nested component (e.g. ``act=starrelu``) or a list.
Value = Union[int, float, bool, str, None, "Call", List[Any]]


def _locs() -> Dict[str, Loc]:
    return field(default_factory=dict, compare=False, repr=False)


@dataclass
class Node:
    locs: Dict[str, Loc] = _locs()

    def loc(self, name: str = "") -> Optional[Loc]:
        """Where ``name`` was written; falls back to the node itself."""
        return self.locs.get(name) or self.locs.get("")


@dataclass
class Call(Node):
    """A named registry component with keyword arguments: ``attention(head_dim=32)``.

    ``args`` holds only what the user wrote; the registry supplies the rest.
    """

    name: str = ""
    args: Dict[str, Value] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.args, dict):
            raise TypeError("Call.args must be a dict")


def call(name: str, **args: Value) -> Call:
    return Call(name=name, args=dict(args))


# --- field metadata ----------------------------------------------------------------------

@dataclass(frozen=True)
class Setting(Field):
    """What one IR field means to the user: a :class:`~mfdsl.fields.Field` (type, range,
    choices, none-ability; what the checks and the schema read) plus how it is documented
    and spelt in the languages and on the command line.

    A subclass rather than a ``field`` attribute: a setting *is* a constrained value,
    and the readers, printers, docs and CLI read ``meta.type`` / ``meta.min`` directly;
    :func:`mfdsl.checks.values.check_value` takes either.
    """

    doc: str = ""
    key: Optional[str] = None  # the word in .mf and YAML when it is not the field name
    group: Optional[str] = None  # written under a group word: `mlp ratio 4`, `mlp: {ratio: 4}`
    cli: Optional[str] = None  # the command-line option that overrides it, if any
    cli_off: bool = False  # also a --no-X flag: none if optional, else 0
    examples: Tuple[Any, ...] = ()


_META = "mfdsl"


def setting(default: Any = None, doc: str = "", type: Optional[str] = None, *,
            factory: Any = None, **kw: Any) -> Any:
    """A dataclass field carrying its :class:`Setting`. ``type`` defaults from the value."""
    if type is None:
        sample = factory() if factory is not None else default
        type = {bool: BOOL, int: INT, float: FLOAT, str: STR, tuple: FLOATS}[builtins_type(sample)]
    meta = {_META: Setting(type=type, doc=doc, **kw)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


MISSING_FACTORY = MISSING


def builtins_type(v: Any) -> type:
    return bool if isinstance(v, bool) else type(v)


def setting_of(cls: type, name: str) -> Optional[Setting]:
    for f in fields(cls):
        if f.name == name:
            return f.metadata.get(_META)
    return None


def settings_of(cls: type) -> Iterator[Tuple[str, Setting, Any]]:
    """(field name, Setting, default) of every declared setting of ``cls``, in order."""
    for f in fields(cls):
        meta = f.metadata.get(_META)
        if meta is None:
            continue
        default = f.default_factory() if f.default_factory is not MISSING_FACTORY else f.default
        yield f.name, meta, default


@dataclass
class DownsampleSpec(Node):
    """One strided Conv2d between stages (or the stem), with optional norms around it."""

    kernel: int = setting(3, "Conv kernel size.", min=1, max=1024)
    stride: int = setting(2, "Conv stride (the downsampling factor).", min=1, max=1024)
    padding: int = setting(1, "Zero padding on each side (smaller than the kernel).", min=0,
                           max=1023)
    bias: bool = setting(True, "Conv bias.")
    pre_norm: Optional[Call] = setting(None, "Norm before the conv, on the previous width "
                                       "(none: no norm).", "norm", optional=True)
    post_norm: Optional[Call] = setting(None, "Norm after the conv, on the new width "
                                        "(none: no norm).", "norm", optional=True)

    def out_size(self, size: int) -> int:
        """A side of the conv's output for an input side of ``size`` pixels."""
        return (size + 2 * self.padding - self.kernel) // self.stride + 1


def default_stem() -> DownsampleSpec:
    return DownsampleSpec(
        kernel=7, stride=4, padding=2, bias=True, pre_norm=None,
        post_norm=call("layernorm", bias=False, eps=1e-6),
    )


def default_downsample() -> DownsampleSpec:
    return DownsampleSpec(
        kernel=3, stride=2, padding=1, bias=True,
        pre_norm=call("layernorm", bias=False, eps=1e-6), post_norm=None,
    )


def default_block_norm() -> Call:
    return call("layernorm", bias=False, eps=1e-6)


# Sanity bounds far beyond any real model: a typo like x2000000 must not make the size step
# build millions of (meta) blocks.
MAX_DEPTH = 1000
MAX_WIDTH = 1 << 20  # channels
MAX_SIDE = 1 << 16  # pixels of an input side
MAX_CLASSES = 1 << 24


@dataclass
class StageSpec(Node):
    """``depth`` blocks of width ``width``. Block j uses ``mixers[j % len(mixers)]``.

    The settings from ``norm`` on are the stage settings: written after a stage's width
    for that stage, or at model level (YAML: under ``defaults``) for every stage.
    """

    depth: int = setting(1, "Number of blocks.", min=1, max=MAX_DEPTH)
    width: int = setting(64, "Channels of the stage.", min=1, max=MAX_WIDTH)
    mixers: List[Call] = field(default_factory=lambda: [call("identity")])
    mlp_ratio: float = setting(4.0, "Hidden width / width of the block MLP.", min=0,
                               min_exclusive=True, max=64, group="mlp", key="ratio")
    mlp_act: Call = setting(None, "Activation between the two Linear layers of the MLP.",
                            "activation", factory=lambda: call("starrelu"), group="mlp",
                            key="act", examples=("starrelu", "gelu", "squared_relu"))
    mlp_bias: bool = setting(False, "Bias in both Linear layers of the MLP.", group="mlp",
                             key="bias")
    norm: Call = setting(None, "Norm before the token mixer and before the MLP.", "norm",
                         factory=default_block_norm,
                         examples=(call("layernorm", bias=False, eps=1e-6),
                                   call("modified_layernorm", eps=1e-6)))
    layer_scale: Optional[float] = setting(
        None, "Initial value of a learnable per-channel scale on each residual branch "
        "(none: no layer scale).", FLOAT, optional=True, tensor=True, examples=(1e-6,))
    res_scale: Optional[float] = setting(
        None, "Initial value of a learnable per-channel scale on the residual path (none: "
        "no residual scale). The baselines use 1.0 in stages 2 and 3.", FLOAT, optional=True,
        tensor=True, examples=(1.0,))
    # Stage 0 is downsampled by the model's stem and keeps None here. For later stages the
    # front ends fill default_downsample() unless the user wrote `downsample none`, which
    # keeps the resolution (width must then equal the previous stage's).
    downsample: Optional[DownsampleSpec] = None

    def mixer_for_block(self, j: int) -> Call:
        return self.mixers[j % len(self.mixers)]


# The stage settings (everything a stage line or model-level line may set), in the order
# the printers write them.
STAGE_SETTINGS: Tuple[str, ...] = ("norm", "mlp_ratio", "mlp_act", "mlp_bias", "layer_scale",
                                   "res_scale")

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
OPTIMIZERS = ("adamw", "lamb", "sgd")
SCHEDULES = ("cosine", "constant")
SCHED_UNITS = ("epoch", "step")
WARMUP_MODES = ("inside", "prefix")


@dataclass
class EvalSpec(Node):
    """The model's default evaluation transform (timm's pretrained_cfg)."""

    crop_pct: float = setting(1.0, "Center-crop fraction.", min=0, min_exclusive=True, max=1,
                              examples=(1.0, 0.95))
    interpolation: str = setting("bicubic", "Resize interpolation.", choices=INTERPOLATIONS)
    mean: Tuple[float, ...] = setting((0.485, 0.456, 0.406), "Per-channel mean (one number "
                                      "per input channel).", FLOATS, tensor=True)
    std: Tuple[float, ...] = setting((0.229, 0.224, 0.225), "Per-channel std (one number per "
                                     "input channel).", FLOATS, item_min=0,
                                     item_min_exclusive=True, tensor=True)


_BIG = 10_000_000


@dataclass
class RecipeSpec(Node):
    """The training recipe (the paper's ImageNet-1K settings by default). ``lr`` is stated
    for ``lr_batch``."""

    epochs: int = setting(300, "Training epochs.", min=1, max=100_000, cli="--epochs")
    batch_size: int = setting(4096, "Global batch size.", min=1, max=_BIG, cli="--batch-size")
    optimizer: str = setting("adamw", "Optimizer.", choices=OPTIMIZERS, cli="--optimizer",
                             examples=("adamw", "lamb"))
    lr: float = setting(4e-3, "Peak learning rate, stated for lr_batch (scaled linearly to "
                        "batch_size).", min=0, min_exclusive=True, max=10, cli="--lr",
                        examples=(4e-3, 8e-3))
    lr_batch: int = setting(4096, "The batch size lr is stated for.", min=1, max=_BIG,
                            cli="--lr-batch")
    weight_decay: float = setting(0.05, "Decoupled weight decay.", min=0, max=10,
                                  cli="--weight-decay")
    opt_eps: Optional[float] = setting(None, "Optimizer epsilon (none: the optimizer's own "
                                       "default, lamb 1e-6, adamw 1e-8, as the official "
                                       "train.py resolves it).", FLOAT, min=0,
                                       min_exclusive=True, max=1, optional=True,
                                       cli="--opt-eps", examples=(1e-6, 1e-8))
    betas: Tuple[float, float] = setting((0.9, 0.999), "Adam/LAMB betas.", FLOATS, length=2,
                                         item_min=0, item_max=1, item_max_exclusive=True,
                                         cli="--betas")
    momentum: float = setting(0.9, "SGD momentum (sgd only).", min=0, max=1, cli="--momentum")
    sched: str = setting("cosine", "Learning-rate schedule: cosine decay lr -> min_lr over "
                         "epochs, or constant lr.", choices=SCHEDULES, cli="--sched")
    sched_unit: str = setting("epoch", "When the lr changes: once per epoch (the official "
                              "timm scheduler, t_in_epochs) or at every optimizer step (a "
                              "smooth per-step cosine).", choices=SCHED_UNITS,
                              cli="--sched-unit")
    warmup_mode: str = setting("inside", "How warmup composes with the cosine: inside (the "
                               "warmup epochs are the cosine's first epochs, timm's "
                               "warmup_prefix=False: the official) or prefix (warmup first, "
                               "then a full cosine over the remaining epochs).",
                               choices=WARMUP_MODES, cli="--warmup-mode")
    cooldown_epochs: int = setting(0, "Epochs run at min_lr after epochs (the official "
                                   "pre-training runs 10).", min=0, max=100_000,
                                   cli="--cooldown-epochs", examples=(10,))
    warmup_epochs: int = setting(5, "Linear warmup epochs (at most epochs).", min=0,
                                 max=100_000, cli="--warmup-epochs", examples=(5, 20))
    warmup_lr: float = setting(1e-6, "Learning rate at the start of warmup.", min=0, max=10,
                               cli="--warmup-lr")
    min_lr: float = setting(1e-5, "Final learning rate of the cosine schedule.", min=0, max=10,
                            cli="--min-lr")
    drop_path: float = setting(0.0, "Stochastic depth rate, growing linearly over the blocks "
                               "to this value.", min=0, max=0.99, cli="--drop-path", cli_off=True,
                               examples=(0.1, 0.15))
    head_dropout: float = setting(0.0, "Dropout before the classifier's last Linear.", min=0,
                                  max=0.99, cli="--head-dropout", examples=(0.0, 0.4))
    label_smoothing: float = setting(0.1, "Label smoothing.", min=0, max=0.99,
                                     cli="--label-smoothing", cli_off=True)
    mixup: float = setting(0.8, "Mixup alpha (0: off).", min=0, max=100, cli="--mixup", cli_off=True)
    cutmix: float = setting(1.0, "CutMix alpha (0: off).", min=0, max=100, cli="--cutmix", cli_off=True)
    mixup_switch_prob: float = setting(0.5, "Probability of CutMix instead of Mixup when both "
                                       "are on.", min=0, max=1, cli="--mixup-switch-prob")
    randaugment: Optional[str] = setting(
        "rand-m9-mstd0.5-inc1", "Data augmentation policy, timm's config string: RandAugment "
        "'rand-m9-mstd0.5-inc1', AutoAugment 'original', 'v0' or 'augmix-m5-w3' "
        "(none: off).", STR, optional=True, cli="--randaugment", cli_off=True)
    random_erasing: float = setting(0.25, "Random erasing probability.", min=0, max=1,
                                    cli="--random-erasing", cli_off=True)
    train_interpolation: str = setting("random", "Resize interpolation for training crops.",
                                       choices=("bilinear", "bicubic", "nearest", "random"),
                                       cli="--train-interpolation")
    # No generated flag: --amp/--no-amp is also a run option (default: on CUDA only).
    amp: bool = setting(True, "Automatic mixed precision.")
    ema: Optional[float] = setting(None, "Model EMA decay (none: no EMA).", FLOAT, min=0,
                                   min_exclusive=True, max=1, max_exclusive=True,
                                   optional=True, cli="--ema", cli_off=True, examples=(0.9999,))
    clip_grad: Optional[float] = setting(None, "Gradient norm clipping (none: off).", FLOAT,
                                         min=0, min_exclusive=True, optional=True,
                                         cli="--clip-grad", cli_off=True, examples=(5.0,))
    finetune_from: Optional[str] = setting(None, "The checkpoint or spec this recipe "
                                           "fine-tunes (none: from scratch).", STR,
                                           optional=True, cli="--finetune-from",
                                           examples=("caformer_s18",))
    layer_decay: Optional[float] = setting(
        None, "Layer-wise lr decay (timm's param_groups_layer_decay): the head trains at lr, "
        "each block below it (a stage's downsampling with its first block; the stem last) "
        "at this factor times the lr of the one above (none: off).", FLOAT, min=0,
        min_exclusive=True, max=1, optional=True, cli="--layer-decay", cli_off=True,
        examples=(0.75,))
    freeze: Optional[str] = setting(
        None, "Parts that do not train: places stem, stageI[-J][.blockK[-L]], output_norm, "
        "head; kinds mixer, mlp, norm, scale, downsample; or place.kind (stage0-2.mixer), "
        "separated by spaces (none: nothing frozen).", STR, optional=True, cli="--freeze",
        cli_off=True, examples=("stem stage0-1", "norm"))
    linear_probe: bool = setting(False, "Train the classifier head alone (everything else "
                                 "frozen).", cli="--linear-probe")
    adapters: Optional[str] = setting(
        None, "Low-rank adapters (LoRA) on the linear and 1x1-conv layers of these parts "
        "(the freeze syntax: mixer, mlp, stage2-3.mixer, ...), trained with the head "
        "alone; merged into the weights by folding and export (none: no adapters).", STR,
        optional=True, cli="--adapters", cli_off=True, examples=("mixer mlp",))
    adapter_rank: int = setting(8, "Rank of each adapter.", min=1, max=4096,
                                cli="--adapter-rank")
    adapter_alpha: float = setting(16.0, "Adapter scale numerator: the update is alpha / "
                                   "rank times B @ A.", min=0, min_exclusive=True, max=1e6,
                                   cli="--adapter-alpha")
    adapter_dropout: float = setting(0.0, "Dropout on each adapter's input in training (LoRA's "
                                     "lora_dropout): the adapter's update reads dropout(x).",
                                     min=0, max=1, max_exclusive=True,
                                     cli="--adapter-dropout", examples=(0.0, 0.1))


@dataclass
class LimitsSpec(Node):
    """Size limits checked before any real tensor is allocated; users may raise them."""

    max_params: int = setting(1_000_000_000, "Maximum parameters.", COUNT, min=1,
                              key="params", cli="--max-params", examples=("2G",))
    max_macs: int = setting(1_000_000_000_000, "Maximum MACs per image.", COUNT, min=1,
                            key="macs", cli="--max-macs", examples=("2T",))
    max_activations: int = setting(
        16_000_000_000, "Maximum bytes of activations one training image keeps for the backward "
        "pass (fp32).", COUNT, min=1, key="activations", cli="--max-activations",
        examples=("64G",))


def default_dense_norm() -> Call:
    """GroupNorm(1, C) with weight and bias, eps 1e-5: the norm the official PoolFormer
    backbone (``fork_feat``) puts on each output."""
    return call("modified_layernorm", bias=True, eps=1e-5)


@dataclass
class DenseSpec(Node):
    """The feature maps a detection / segmentation backbone yields: the outputs of the
    stages in ``outputs``, each through ``norm`` unless ``norms`` names another for that
    stage (``stage0 identity``: the official RetinaNet setting, which skips stage 0's)."""

    outputs: Tuple[int, ...] = (0, 1, 2, 3)  # stage indices, increasing
    norm: Call = setting(None, "Norm on each dense output (B, C, H, W) map.", "norm",
                         factory=default_dense_norm)
    norms: Dict[int, Call] = field(default_factory=dict)  # per-stage override of norm

    def norm_for(self, stage: int) -> Call:
        return self.norms.get(stage, self.norm)


@dataclass
class ModelSpec(Node):
    name: str = setting("model", "The model's name (e.g. caformer_s18).")
    in_chans: int = setting(3, "Input channels.", min=1, max=MAX_WIDTH)
    img_size: Tuple[int, int] = setting((224, 224), "Input height and width.", SIZE, min=1,
                                        max=MAX_SIDE)
    num_classes: int = setting(1000, "Number of classes of the head.", min=1, max=MAX_CLASSES)
    stem: DownsampleSpec = field(default_factory=default_stem)
    stages: List[StageSpec] = field(default_factory=list)
    output_norm: Call = setting(None, "Norm after global average pooling, on the pooled "
                                "(B, C) features.", "norm",
                                factory=lambda: call("layernorm", bias=True, eps=1e-6))
    head: Call = setting(None, "The classifier head.", "head", factory=lambda: call("linear"),
                         examples=("linear", call("mlp", ratio=4)))
    eval: EvalSpec = field(default_factory=EvalSpec)
    limits: LimitsSpec = field(default_factory=LimitsSpec)
    recipe: Optional[RecipeSpec] = None
    dense: Optional[DenseSpec] = None  # dense outputs: the spec is a backbone too
    source: Optional[str] = field(default=None, compare=False, repr=False)  # file path

    @property
    def depths(self) -> List[int]:
        return [s.depth for s in self.stages]

    @property
    def widths(self) -> List[int]:
        return [s.width for s in self.stages]

    @property
    def drop_path_rate(self) -> float:
        return self.recipe.drop_path if self.recipe else 0.0

    @property
    def head_dropout(self) -> float:
        return self.recipe.head_dropout if self.recipe else 0.0

    def stage_resolutions(self) -> List[Tuple[int, int]]:
        """Feature-map (H, W) of each stage, by :meth:`DownsampleSpec.out_size`."""
        h, w = self.img_size
        out = []
        for i, st in enumerate(self.stages):
            ds = self.stem if i == 0 else st.downsample
            if ds is not None:
                h, w = ds.out_size(h), ds.out_size(w)
            out.append((h, w))
        return out


def with_overrides(node: Any, **changes: Any) -> Any:
    """A copy of an IR node with some fields replaced (locations kept)."""
    new = replace(node, **changes)
    new.locs = dict(node.locs)
    return new


# --- the plain-data form of components (YAML, JSON Schema defaults) ----------------------

def call_data(c: Call, *, nested: bool = False) -> Any:
    """``Call`` -> ``name`` or ``{name: {args}}`` (a nested Call always as a mapping)."""
    if not c.args and not nested:
        return c.name
    return {c.name: {k: arg_data(v) for k, v in c.args.items()}}


def arg_data(v: Any) -> Any:
    if isinstance(v, Call):
        return call_data(v, nested=True)
    if isinstance(v, (list, tuple)):
        return [arg_data(x) for x in v]
    return v


def setting_data(v: Any) -> Any:
    """A setting's value as plain data: a component as in YAML, a tuple as a list."""
    if isinstance(v, Call):
        return call_data(v)
    if isinstance(v, tuple):
        return list(v)
    return v


# Counts (limits) may be written with an SI suffix: 2G = 2 * 10^9.
COUNT_SUFFIX = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
# What a design space may budget (docs/spaces.md): here, below the schema and the spaces.
BUDGET_METRICS = ("params", "macs", "train_memory")
COUNT_PATTERN = r"^[0-9]{1,30}(\.[0-9]{1,30})?[KMGT]$"  # bounded: no count needs more


def unknown_key_hint(key: str, allowed) -> str:
    """The hint of an unknown setting ``key``: the nearest allowed name, or the allowed
    names."""
    from .errors import nearest

    guess = nearest(key, allowed)
    return f"did you mean '{guess}'?" if guess else "allowed: " + ", ".join(allowed)
