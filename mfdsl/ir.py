"""The typed intermediate representation both front ends lower to.

Every node keeps the source location of each field it was given in ``locs`` (field
name -> Loc; key ``""`` is the node itself). Locations never take part in equality, so
``convert`` round trips compare IR values only.

Defaults are the paper's (facts sheet §1): a spec only states what differs.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Dict, List, Optional, Tuple, Union

from .errors import Loc

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


@dataclass
class DownsampleSpec(Node):
    """One strided Conv2d between stages (or the stem), with optional norms around it."""

    kernel: int = 3
    stride: int = 2
    padding: int = 1
    bias: bool = True
    pre_norm: Optional[Call] = None
    post_norm: Optional[Call] = None


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


@dataclass
class StageSpec(Node):
    """``depth`` blocks of width ``width``. Block j uses ``mixers[j % len(mixers)]``."""

    depth: int = 1
    width: int = 64
    mixers: List[Call] = field(default_factory=lambda: [call("identity")])
    mlp_ratio: float = 4.0
    mlp_act: Call = field(default_factory=lambda: call("starrelu"))
    mlp_bias: bool = False
    norm: Call = field(default_factory=default_block_norm)
    layer_scale: Optional[float] = None  # init value; None: no layer scale
    res_scale: Optional[float] = None  # init value; None: no residual scale
    # Stage 0 is downsampled by the model's stem and keeps None here. For later stages the
    # front ends fill default_downsample() unless the user wrote `downsample none`, which
    # keeps the resolution (width must then equal the previous stage's).
    downsample: Optional[DownsampleSpec] = None

    def mixer_for_block(self, j: int) -> Call:
        return self.mixers[j % len(self.mixers)]


@dataclass
class EvalSpec(Node):
    """The model's default evaluation transform (timm's pretrained_cfg)."""

    crop_pct: float = 1.0
    interpolation: str = "bicubic"
    mean: Tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: Tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass
class RecipeSpec(Node):
    """The training recipe (facts sheet §3). ``lr`` is stated for ``lr_batch``."""

    epochs: int = 300
    batch_size: int = 4096
    optimizer: str = "adamw"  # adamw | lamb | sgd
    lr: float = 4e-3
    lr_batch: int = 4096
    weight_decay: float = 0.05
    opt_eps: float = 1e-8
    betas: Tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9  # sgd only
    sched: str = "cosine"  # cosine | constant
    warmup_epochs: int = 5
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    drop_path: float = 0.0
    head_dropout: float = 0.0
    label_smoothing: float = 0.1
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_switch_prob: float = 0.5
    randaugment: Optional[str] = "rand-m9-mstd0.5-inc1"
    random_erasing: float = 0.25
    train_interpolation: str = "random"
    amp: bool = True
    ema: Optional[float] = None  # EMA decay; None: no EMA
    clip_grad: Optional[float] = None
    finetune_from: Optional[str] = None  # e.g. the 224 model a 384 spec fine-tunes


@dataclass
class LimitsSpec(Node):
    """Size limits checked before any real tensor is allocated; users may raise them."""

    max_params: int = 1_000_000_000
    max_macs: int = 1_000_000_000_000


@dataclass
class ModelSpec(Node):
    name: str = "model"
    in_chans: int = 3
    img_size: Tuple[int, int] = (224, 224)
    num_classes: int = 1000
    stem: DownsampleSpec = field(default_factory=default_stem)
    stages: List[StageSpec] = field(default_factory=list)
    output_norm: Call = field(default_factory=lambda: call("layernorm", bias=True, eps=1e-6))
    head: Call = field(default_factory=lambda: call("linear"))
    eval: EvalSpec = field(default_factory=EvalSpec)
    limits: LimitsSpec = field(default_factory=LimitsSpec)
    recipe: Optional[RecipeSpec] = None
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
        """Feature-map (H, W) of each stage, by the conv output-size formula."""
        h, w = self.img_size
        out = []
        for i, st in enumerate(self.stages):
            ds = self.stem if i == 0 else st.downsample
            if ds is not None:
                h = (h + 2 * ds.padding - ds.kernel) // ds.stride + 1
                w = (w + 2 * ds.padding - ds.kernel) // ds.stride + 1
            out.append((h, w))
        return out


def with_overrides(node: Any, **changes: Any) -> Any:
    """A copy of an IR node with some fields replaced (locations kept)."""
    new = replace(node, **changes)
    new.locs = dict(node.locs)
    return new


def field_names(cls: type) -> List[str]:
    return [f.name for f in fields(cls) if f.name not in ("locs", "source")]
