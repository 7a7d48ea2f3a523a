"""The registry of named components a spec can use: mixers, activations, norms, heads.

Register a new one from Python and name it in specs::

    import torch.nn as nn
    from mfdsl.registry import Param, register_mixer

    @register_mixer("shift", Param("shift", int, 1, min=1), doc="Shift tokens by n")
    def shift_mixer(ctx, shift):
        return MyShiftMixer(ctx.dim, shift)

Installed packages may also expose a module under the entry-point group
``mfdsl.components``; it is imported (and so registers its components) the first time
the registry is queried.

Factories receive a :class:`BuildContext` and the resolved arguments. Every module a
factory returns works on channels-last tensors ``(B, H, W, C)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

KINDS = ("mixer", "activation", "norm", "head")
_REF_TYPES = ("activation", "norm")  # a Param whose value is itself a component


@dataclass(frozen=True)
class Param:
    """One keyword argument of a component.

    ``type`` is ``int``, ``float``, ``bool``, ``str`` or a component kind
    (``"activation"``/``"norm"``) for a nested component, whose default is a name or an
    ``ir.Call`` and which reaches the factory as a :data:`Maker`. ``None`` as default
    makes the argument optional (it may be omitted or written as ``none``).
    """

    name: str
    type: Any
    default: Any = None
    min: Optional[float] = None
    max: Optional[float] = None
    choices: Optional[Tuple[Any, ...]] = None
    doc: str = ""
    min_exclusive: bool = False

    def range_text(self) -> str:
        if self.choices:
            return "one of " + ", ".join(str(c) for c in self.choices)
        lo = "" if self.min is None else (f"> {self.min}" if self.min_exclusive else f">= {self.min}")
        hi = "" if self.max is None else f"<= {self.max}"
        return " and ".join(t for t in (lo, hi) if t) or "any value"

    @property
    def type_name(self) -> str:
        return self.type if isinstance(self.type, str) else self.type.__name__


@dataclass(frozen=True)
class BuildContext:
    """What a factory may know about where its module goes."""

    dim: int
    resolution: Tuple[int, int] = (1, 1)  # (H, W) of the feature map it sees
    stage: int = 0
    block: int = 0
    target: str = "cpu"  # lowering target; factories may pick equivalent kernels


# A nested component (``act=starrelu``) reaches a factory as a Maker: call it with the
# width of the tensor it will see to get a fresh module.
Maker = Callable[[int], Any]

# A semantic check: (ctx, args) -> list of (argument name or "", message, hint or None).
Check = Callable[[BuildContext, Dict[str, Any]], List[Tuple[str, str, Optional[str]]]]


@dataclass(frozen=True)
class Component:
    kind: str
    name: str
    factory: Callable[..., Any]
    params: Tuple[Param, ...] = ()
    doc: str = ""
    check: Optional[Check] = None

    def param(self, name: str) -> Optional[Param]:
        for p in self.params:
            if p.name == name:
                return p
        return None

    def defaults(self) -> Dict[str, Any]:
        return {p.name: p.default for p in self.params}


@dataclass
class Registry:
    _items: Dict[str, Dict[str, Component]] = field(
        default_factory=lambda: {k: {} for k in KINDS}
    )
    _plugins_loaded: bool = False

    def register(
        self,
        kind: str,
        name: str,
        *params: Param,
        doc: str = "",
        check: Optional[Check] = None,
        replace: bool = False,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: register ``factory`` as component ``name`` of ``kind``."""
        if kind not in KINDS:
            raise ValueError(f"unknown component kind {kind!r}; expected one of {KINDS}")
        if not name.isidentifier():
            raise ValueError(f"component name {name!r} must be an identifier")

        def deco(factory: Callable[..., Any]) -> Callable[..., Any]:
            table = self._items[kind]
            if name in table and not replace:
                raise ValueError(f"{kind} {name!r} is already registered")
            text = doc or (factory.__doc__ or "").strip().split("\n")[0]
            table[name] = Component(kind, name, factory, tuple(params), text, check)
            return factory

        return deco

    def get(self, kind: str, name: str) -> Optional[Component]:
        self._load_plugins()
        return self._items[kind].get(name)

    def names(self, kind: str) -> List[str]:
        self._load_plugins()
        return sorted(self._items[kind])

    def unregister(self, kind: str, name: str) -> None:
        self._items[kind].pop(name, None)

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        # The built-in layers register themselves on import.
        from . import layers  # noqa: F401

        try:
            from importlib.metadata import entry_points

            for ep in entry_points(group="mfdsl.components"):
                ep.load()
        except Exception as exc:  # a broken plugin must not break every spec
            import warnings

            warnings.warn(f"mfdsl: could not load a component plugin: {exc}")


registry = Registry()


def register_mixer(name: str, *params: Param, **kw: Any):
    """Register a token mixer: ``factory(ctx, **args) -> nn.Module`` on (B, H, W, C)."""
    return registry.register("mixer", name, *params, **kw)


def register_activation(name: str, *params: Param, **kw: Any):
    """Register an activation: ``factory(ctx, **args) -> nn.Module`` (elementwise)."""
    return registry.register("activation", name, *params, **kw)


def register_norm(name: str, *params: Param, **kw: Any):
    """Register a norm: ``factory(ctx, **args) -> nn.Module`` over (B, H, W, C) or (B, C)."""
    return registry.register("norm", name, *params, **kw)


def register_head(name: str, *params: Param, **kw: Any):
    """Register a classifier head: ``factory(ctx, num_classes, dropout, **args)`` on (B, C)."""
    return registry.register("head", name, *params, **kw)


def resolve_args(comp: Component, given: Dict[str, Any]) -> Dict[str, Any]:
    """The component's defaults updated with what the spec gave (already checked); ints
    are widened where a float is expected."""
    out = comp.defaults()
    out.update(given)
    for p in comp.params:
        v = out.get(p.name)
        if p.type is float and isinstance(v, int) and not isinstance(v, bool):
            out[p.name] = float(v)
    return out


def names_for(kind: str) -> Sequence[str]:
    return registry.names(kind)
