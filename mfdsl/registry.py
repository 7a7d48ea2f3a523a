"""The registry of named components a spec can use: mixers, activations, norms, heads.

Register a new one from Python and name it in specs::

    import torch.nn as nn
    from mfdsl.registry import Param, register_mixer

    @register_mixer("shift", Param("shift", int, 1, min=1), doc="Shift tokens by n")
    def shift_mixer(ctx, shift):
        return MyShiftMixer(ctx.dim, shift)

This module imports nothing of mfdsl but :mod:`mfdsl.fields`, a leaf module (the value
types and constraints an argument shares with the IR's settings). The built-in
components register themselves when :mod:`mfdsl.layers` is imported (the checks, lowering
and schema generator import it), and installed plugins (modules under the entry-point
group ``mfdsl.components``) are imported by :func:`mfdsl.plugins.load_plugins`, which
the API and the CLI call on entry.

Registration order never matters: built-in and user components are kept apart, and a
name both define is an error (at lookup) unless the user's was registered with
``replace=True``.

Factories receive a :class:`BuildContext` and the resolved arguments. Every module a
factory returns works on channels-last tensors ``(B, H, W, C)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .fields import BOOL, COMPONENT_KINDS, FLOAT, INT, STR, Field

KINDS = COMPONENT_KINDS
# The Python types an argument may declare, and the value type each one is checked as.
_VALUE_TYPES = {int: INT, float: FLOAT, bool: BOOL, str: STR}


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

    @property
    def field(self) -> Field:
        """The argument's type and constraints, checked and described as a setting's are.

        Floats must fit float32 (``tensor``): component floats end up in float32 tensors
        or kernels, where a larger value would be inf.
        """
        if isinstance(self.type, str):
            t = self.type if self.type in KINDS else None
        else:
            t = next((v for k, v in _VALUE_TYPES.items() if self.type is k), None)
        if t is None:
            raise RegistryError(
                f"argument {self.name!r} has type {self.type!r}; expected int, float, bool, "
                f"str or a component kind ({', '.join(KINDS)})")
        return Field(t, min=self.min, max=self.max, min_exclusive=self.min_exclusive,
                     choices=tuple(self.choices) if self.choices else None,
                     optional=self.default is None, tensor=t == FLOAT)

    @property
    def type_name(self) -> str:
        return self.type if isinstance(self.type, str) else self.type.__name__


# The tensors a component may be placed on. A norm declares which it supports (and what
# it computes there); the checks refuse it elsewhere with a located error.
MAP = "map"  # a feature map (B, H, W, C) inside the stages
POOLED = "pooled"  # a pooled feature vector (B, C) in the head


@dataclass(frozen=True)
class BuildContext:
    """What a factory may know about where its module goes."""

    dim: int
    resolution: Tuple[int, int] = (1, 1)  # (H, W) of the feature map it sees
    stage: int = 0
    block: int = 0
    # The lowering target, for a factory's information: speed variants are chosen after
    # building, by mfdsl.layers.variants, not by factories.
    target: str = "cpu"
    position: str = MAP  # MAP or POOLED: the tensor the module will see


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
    # For norms: positions (MAP, POOLED) the component is correct on, with what it computes
    # there (docs). Undeclared positions are refused by the checks.
    positions: Tuple[str, ...] = (MAP,)
    builtin: bool = False
    # For mixers: whether the module built for one input size runs at any other (False:
    # its weights are sized by the spec's input, like random mixing's N x N matrix).
    any_size: bool = True

    def param(self, name: str) -> Optional[Param]:
        for p in self.params:
            if p.name == name:
                return p
        return None

    def defaults(self) -> Dict[str, Any]:
        return {p.name: p.default for p in self.params}


class RegistryError(ValueError):
    """Two components registered under one name, or another misuse of the registry."""


@dataclass
class Registry:
    """Component tables by kind; built-ins and user components apart (see module doc)."""

    _builtin: Dict[str, Dict[str, Component]] = field(
        default_factory=lambda: {k: {} for k in KINDS})
    _user: Dict[str, Dict[str, Component]] = field(
        default_factory=lambda: {k: {} for k in KINDS})
    _replaces: Dict[str, Dict[str, bool]] = field(
        default_factory=lambda: {k: {} for k in KINDS})

    def register(
        self,
        kind: str,
        name: str,
        *params: Param,
        doc: str = "",
        check: Optional[Check] = None,
        replace: bool = False,
        positions: Optional[Sequence[str]] = None,
        any_size: bool = True,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: register ``factory`` as component ``name`` of ``kind``.

        ``positions`` (norms): where the component is correct, MAP and/or POOLED; default
        MAP only, so a norm that has not said what it means on a pooled (B, C) vector is
        refused in the head. ``any_size`` (mixers): False when the module is sized for the
        spec's input and cannot run at another size; such a mixer is refused in a spec with
        dense outputs.
        """
        if kind not in KINDS:
            raise RegistryError(f"unknown component kind {kind!r}; expected one of {KINDS}")
        if not isinstance(name, str) or not name.isidentifier():
            raise RegistryError(f"component name {name!r} must be an identifier")
        where = tuple(positions) if positions is not None else (MAP,)
        bad = [p for p in where if p not in (MAP, POOLED)]
        if bad or not where:
            raise RegistryError(f"positions must be a non-empty subset of {(MAP, POOLED)}, "
                                f"got {where!r}")

        for p in params:
            p.field  # noqa: B018 - raises RegistryError for a type the checks cannot read

        def deco(factory: Callable[..., Any]) -> Callable[..., Any]:
            builtin = getattr(factory, "__module__", "").startswith("mfdsl.layers")
            table = (self._builtin if builtin else self._user)[kind]
            if name in table and not replace:
                raise RegistryError(f"{kind} {name!r} is already registered")
            if not builtin and name in self._builtin[kind] and not replace:
                raise RegistryError(f"{kind} {name!r} is already registered (built in); "
                                    "pass replace=True to override it")
            text = doc or (factory.__doc__ or "").strip().split("\n")[0]
            table[name] = Component(kind, name, factory, tuple(params), text, check, where,
                                    builtin, bool(any_size))
            if not builtin:
                self._replaces[kind][name] = replace
            return factory

        return deco

    def get(self, kind: str, name: str) -> Optional[Component]:
        user = self._user[kind].get(name)
        builtin = self._builtin[kind].get(name)
        if user is not None and builtin is not None and not self._replaces[kind].get(name):
            # Only possible when the user's came first: the same error, order-independent.
            raise RegistryError(f"{kind} {name!r} is registered twice: built in and by "
                                f"{user.factory.__module__}; register it with replace=True "
                                "to override the built-in")
        return user if user is not None else builtin

    def names(self, kind: str) -> List[str]:
        return sorted(set(self._builtin[kind]) | set(self._user[kind]))

    def builtin_names(self, kind: str) -> List[str]:
        return sorted(self._builtin[kind])

    def unregister(self, kind: str, name: str) -> None:
        """Remove a user component (built-ins stay)."""
        self._user[kind].pop(name, None)
        self._replaces[kind].pop(name, None)


registry = Registry()


def register_mixer(name: str, *params: Param, **kw: Any):
    """Register a token mixer: ``factory(ctx, **args) -> nn.Module`` on (B, H, W, C)."""
    return registry.register("mixer", name, *params, **kw)


def register_activation(name: str, *params: Param, **kw: Any):
    """Register an activation: ``factory(ctx, **args) -> nn.Module`` (elementwise)."""
    return registry.register("activation", name, *params, **kw)


def register_norm(name: str, *params: Param, **kw: Any):
    """Register a norm: ``factory(ctx, **args) -> nn.Module`` over (B, H, W, C), and over
    (B, C) too if ``positions`` includes POOLED (``ctx.position`` says which it gets)."""
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
