"""The ``.yaml`` front end: YAML text -> located data -> JSON Schema -> ``ir.ModelSpec``.

The YAML is read as data only: PyYAML's ``SafeLoader`` composes a node graph which this
module walks itself, so every key and value keeps its line and column and nothing in
the file is ever constructed as a Python object or executed. Scalars are resolved by the
YAML 1.2 core schema (``1e-6`` is a float, ``yes``/``on`` are strings, not booleans).

The document is validated against ``grammar/metaformer.schema.json`` (draft 2020-12);
the first schema error is reported at the YAML position of the offending key or value.
Component names (mixers, norms, ...) are not closed by the schema, since plugins may
register more: ``mfdsl.checks.check`` reports unknown ones.
"""
from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from typing import Any, Dict, List, Optional, Tuple

import yaml

from ..errors import Loc, SpecError, nearest
from ..ir import (unknown_key_hint, 
    COUNT, COUNT_SUFFIX, STAGE_SETTINGS, Call, DenseSpec, DownsampleSpec, EvalSpec, LimitsSpec,
    ModelSpec, RecipeSpec, StageSpec, default_downsample, default_stem, setting_of,
    settings_of,
)

SCHEMA_FILE = "metaformer.schema.json"
# Keeps a file full of aliases-of-aliases ("billion laughs") from exhausting memory.
MAX_NODES = 200_000
MAX_DEPTH = 64  # nesting; a spec needs about 8

Path = Tuple[Any, ...]  # keys and list indices from the document root

# The format's vocabulary (keys, groups, types) is the IR's field metadata (mfdsl.ir).
# An optional setting may be written as a bare `none` as well as YAML's null.
NONE_WORDS = ("none", "None")
# Longer integers are not a size anyone means, and Python refuses to read past 4300 digits.
MAX_DIGITS = 100


# --- reading YAML with positions -------------------------------------------------------

class SpecLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core-schema scalars; used only to compose nodes."""


SpecLoader.yaml_implicit_resolvers = {}
SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"))
SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""])
SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?[0-9][0-9_]*|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789"))
SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))

_TAG = "tag:yaml.org,2002:"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _loc(path: str, mark: Any) -> Loc:
    return Loc(path, mark.line + 1, mark.column + 1)


class _Document:
    """Plain data of a YAML document plus where each key and value was written."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.value_locs: Dict[Path, Loc] = {}
        self.key_locs: Dict[Path, Loc] = {}
        self._count = 0

    def loc(self, p: Path) -> Loc:
        """The value at ``p``, or the closest enclosing value that was written."""
        while p not in self.value_locs and p:
            p = p[:-1]
        return self.value_locs.get(p, Loc(self.path, 1, 1))

    def key_loc(self, p: Path) -> Loc:
        return self.key_locs.get(p) or self.loc(p)

    def convert(self, node: yaml.Node, p: Path) -> Any:
        self._count += 1
        if self._count > MAX_NODES:
            raise SpecError(f"the document has more than {MAX_NODES} values (are aliases "
                            "nested inside each other?)", _loc(self.path, node.start_mark))
        self.value_locs[p] = _loc(self.path, node.start_mark)
        if len(p) > MAX_DEPTH:
            raise SpecError(f"values are nested more than {MAX_DEPTH} levels deep",
                            self.value_locs[p])
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node)
        if isinstance(node, yaml.SequenceNode):
            self._check_tag(node, "seq")
            return [self.convert(item, p + (i,)) for i, item in enumerate(node.value)]
        self._check_tag(node, "map")
        out: Dict[str, Any] = {}
        seen: Dict[str, Loc] = {}
        for knode, vnode in node.value:
            kloc = _loc(self.path, knode.start_mark)
            if not isinstance(knode, yaml.ScalarNode):
                raise SpecError("a mapping key must be a plain name, not a list or mapping",
                                kloc)
            key = knode.value
            if key == "<<" and knode.style is None:
                raise SpecError("YAML merge keys (<<) are not supported", kloc,
                                hint="write the settings out, or use `defaults:` for "
                                     "settings shared by all stages")
            if knode.tag.startswith(_TAG + "python") or knode.tag.startswith("!"):
                self._check_tag(knode, "str")
            if key in seen:
                first = seen[key]
                raise SpecError(f"duplicate key '{key}' (first given at line {first.line}, "
                                f"column {first.column})", kloc,
                                hint="each key may appear once per mapping")
            seen[key] = kloc
            self.key_locs[p + (key,)] = kloc
            out[key] = self.convert(vnode, p + (key,))
        return out

    def _check_tag(self, node: yaml.Node, expected: str) -> None:
        if node.tag == _TAG + expected:
            return
        loc = _loc(self.path, node.start_mark)
        if "python" in node.tag:
            raise SpecError(f"python tags are not allowed: '{_short_tag(node.tag)}'", loc,
                            hint="spec files are data; nothing in them is constructed or "
                                 "executed")
        raise SpecError(f"unsupported YAML tag '{_short_tag(node.tag)}'", loc,
                        hint="remove the tag; plain YAML scalars, lists and mappings only")

    def _scalar(self, node: yaml.ScalarNode) -> Any:
        tag, text = node.tag, node.value
        loc = _loc(self.path, node.start_mark)
        if tag == _TAG + "str":
            return text
        if tag == _TAG + "null":
            if text not in ("", "~", "null", "Null", "NULL"):
                raise SpecError(f"'{text}' is not a null value", loc)
            return None
        if tag == _TAG + "bool":
            if text.lower() not in ("true", "false"):
                raise SpecError(f"'{text}' is not true or false", loc)
            return text.lower() == "true"
        if tag == _TAG + "int":
            return _parse_int(text, loc)
        if tag == _TAG + "float":
            return _parse_float(text, loc)
        self._check_tag(node, "str")
        return text  # not reached: _check_tag raises for every other tag


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_TAG):] if tag.startswith(_TAG) else tag


def _parse_int(text: str, loc: Loc) -> int:
    t = text.replace("_", "")
    if len(t) > MAX_DIGITS:
        raise SpecError(f"the integer {text[:20]}... ({len(t)} digits) is too large", loc,
                        hint="no setting takes a number this large")
    try:
        if t.startswith("0o"):
            return int(t[2:], 8)
        if t.startswith("0x"):
            return int(t[2:], 16)
        return int(t, 10)
    except ValueError:
        raise SpecError(f"'{text}' is not an integer", loc) from None


def _parse_float(text: str, loc: Loc) -> float:
    t = text.replace("_", "").lower()
    if len(t) > MAX_DIGITS + 10:
        raise SpecError(f"the number {text[:20]}... ({len(t)} characters) is too long", loc,
                        hint="no setting takes a number this long")
    try:
        v = float(t.replace(".inf", "inf").replace(".nan", "nan"))
    except ValueError:
        raise SpecError(f"'{text}' is not a number", loc) from None
    # No setting takes infinity or NaN; NaN would also slip through every range check.
    if not math.isfinite(v):
        raise SpecError(f"'{text}' is not a finite number", loc,
                        hint="spec numbers must be finite")
    return v


def _syntax_error(exc: Any, path: str) -> SpecError:
    """A PyYAML scanner/parser/composer error as a located SpecError."""
    mark = exc.problem_mark or exc.context_mark
    loc = _loc(path, mark) if mark is not None else Loc(path, 1, 1)
    problem = (exc.problem or "").strip()
    context = (exc.context or "").strip()
    hint = None
    if context.startswith("expected a single document"):
        return SpecError("a spec file holds one YAML document, but a second one starts here",
                         loc, hint="remove the '---' line and what follows it")
    if "'\\t'" in problem:
        hint = "YAML does not allow tabs for indentation; use spaces"
    elif problem.startswith("mapping values are not allowed"):
        hint = "check this line's indentation, or quote a value that contains ': '"
    elif context:
        hint = context
        cm = exc.context_mark
        if cm is not None and (cm.line, cm.column) != (mark.line, mark.column):
            hint += f" that starts at line {cm.line + 1}, column {cm.column + 1}"
    return SpecError(f"YAML syntax error: {problem or context or 'invalid YAML'}", loc,
                     hint=hint)


def read_yaml(text: str, path: str) -> Tuple[Any, _Document]:
    """Compose ``text`` with the safe loader and convert it, keeping positions."""
    try:
        root = yaml.compose(text, Loader=SpecLoader)
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc, path) from None
    except yaml.reader.ReaderError as exc:  # a control character or bad encoding
        pos = exc.position if isinstance(exc.position, int) else 0
        line = text.count("\n", 0, pos) + 1
        col = pos - (text.rfind("\n", 0, pos) + 1) + 1
        what = (f"character #x{exc.character:04x}" if isinstance(exc.character, int)
                else repr(exc.character))
        raise SpecError(f"YAML does not allow the control {what} here", Loc(path, line, col),
                        hint="remove it, or write it inside a double-quoted string as an "
                             "escape") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"invalid YAML: {exc}", Loc(path, 1, 1)) from None
    except RecursionError:
        raise SpecError("the YAML is nested too deeply to read", Loc(path, 1, 1)) from None
    if root is None:
        raise SpecError("the spec file is empty", Loc(path, 1, 1),
                        hint="start with `model: <name>` and a `stages:` list")
    doc = _Document(path)
    data = doc.convert(root, ())
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"the value {_show(data)}"
        raise SpecError(f"the top level of a spec must be a mapping of settings, got {kind}",
                        doc.loc(()), hint="start with `model: <name>` and a `stages:` list")
    return data, doc


# --- schema validation -----------------------------------------------------------------

@lru_cache(maxsize=2)
def load_schema(space: bool = False) -> Dict[str, Any]:
    """The committed JSON Schema (``grammar/metaformer.schema.json``, or with ``space``
    ``grammar/metaformer-space.schema.json``)."""
    from ..resources import grammar_file
    from ..schema import SPACE_SCHEMA_FILE

    try:
        with open(grammar_file(SPACE_SCHEMA_FILE if space else SCHEMA_FILE),
                  encoding="utf-8") as f:
            return json.load(f)
    except OSError:  # a source tree without the generated file: build it in memory
        from ..schema import build_schema, build_space_schema

        return build_space_schema() if space else build_schema()


@lru_cache(maxsize=2)
def _validator(space: bool = False) -> Any:
    from jsonschema import Draft202012Validator, validators

    # JSON Schema counts 3.0 as an integer; a spec's integers must be written as integers.
    checker = Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, v: isinstance(v, int) and not isinstance(v, bool))
    strict = validators.extend(Draft202012Validator, type_checker=checker)
    return strict(load_schema(space))


def show_path(p: Path) -> str:
    """``('stages', 2, 'depth')`` -> ``stages[2].depth``."""
    out = ""
    for part in p:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "the top level"


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, str):
        return f"'{v}'"
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    return repr(v)


_TYPE_WORDS = {"integer": "an integer", "number": "a number", "boolean": "true or false",
               "string": "a string", "object": "a mapping", "array": "a list", "null": "null"}


def validate(data: Any, doc: _Document, space: bool = False) -> None:
    """Raise SpecError for the most relevant schema violation, at its YAML position
    (``space``: against the design-space schema)."""
    from jsonschema.exceptions import best_match

    error = best_match(_validator(space).iter_errors(data))
    if error is None:
        return
    raise _schema_error(_call_level(error), doc)


def _call_level(error: Any) -> Any:
    """Report a malformed component reference as a whole, not one failed branch of it."""
    e = error
    while e is not None:
        if isinstance(e.schema, dict) and "x-expected" in e.schema:
            inst = e.instance
            well_formed = isinstance(inst, str) and _NAME.match(inst) is not None or (
                isinstance(inst, dict) and len(inst) == 1
                and _NAME.match(next(iter(inst))) is not None
                and isinstance(next(iter(inst.values())), (dict, type(None))))
            if not well_formed or e is error:
                return e
        e = e.parent
    return error


def _deeper(e: Any, p: Path) -> list:
    """The errors of ``e``'s branches that lie below ``p`` (inside a component's args)."""
    return [c for c in (e.context or []) if len(c.absolute_path) > len(p)]


def _schema_error(e: Any, doc: _Document) -> SpecError:
    p = tuple(e.absolute_path)
    where = show_path(p)
    v = e.validator
    inst = e.instance
    hint = None
    loc = doc.loc(p)
    if isinstance(e.schema, dict) and "x-expected" in e.schema:
        msg = f"{where}: expected {e.schema['x-expected']}, got {_show(inst)}"
        if isinstance(inst, dict) and len(inst) == 1 and not _NAME.match(next(iter(inst))):
            name = next(iter(inst))
            msg = f"{where}: '{name}' is not a component name"
            loc = doc.key_loc(p + (name,))
            hint = "a component name is a plain identifier like 'sepconv'"
        elif isinstance(inst, dict) and len(inst) == 1 and isinstance(
                next(iter(inst.values())), dict) and _deeper(e, p):
            # The arguments are a mapping: the problem is inside one of them.
            from jsonschema.exceptions import best_match

            return _schema_error(_call_level(best_match(_deeper(e, p))), doc)
        elif isinstance(inst, dict) and len(inst) == 1:
            name = next(iter(inst))
            msg = (f"{where}: the arguments of '{name}' must be a mapping {{arg: value}}, "
                   f"got {_show(inst[name])}")
            loc = doc.loc(p + (name,))
        elif isinstance(inst, dict):
            hint = "write one component as {name: {arg: value}}; a list of mixers goes in [...]"
        elif isinstance(inst, str):
            hint = "a component name is a plain identifier like 'sepconv'"
        elif inst == []:
            msg = f"{where}: expected at least one component, got an empty list"
        return SpecError(msg, loc, hint=hint)
    if v == "additionalProperties":
        allowed = list(e.schema.get("properties", {}))
        extra = [k for k in inst if k not in allowed]
        key = extra[0] if extra else "?"
        hint = unknown_key_hint(key, allowed)
        what = f"in {where}" if p else "at the top level"
        return SpecError(f"unknown key '{key}' {what}", doc.key_loc(p + (key,)), hint=hint)
    if v == "required":
        missing = [k for k in e.validator_value if k not in inst]
        key = missing[0] if missing else "?"
        desc = e.schema.get("properties", {}).get(key, {}).get("description", "")
        return SpecError(f"{where}: missing required key '{key}'", loc,
                         hint=desc.split(".")[0] if desc else None)
    if v == "type":
        types = e.validator_value if isinstance(e.validator_value, list) else [e.validator_value]
        want = " or ".join(_TYPE_WORDS.get(t, t) for t in types)
        return SpecError(f"{where}: expected {want}, got {_show(inst)}", loc)
    if v == "enum":
        choices = [str(c) for c in e.validator_value]
        guess = nearest(str(inst), choices) if isinstance(inst, str) else None
        return SpecError(f"{where}: expected one of {', '.join(choices)}, got {_show(inst)}",
                         loc, hint=f"did you mean '{guess}'?" if guess else None)
    if v in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        op = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">",
              "exclusiveMaximum": "<"}[v]
        return SpecError(f"{where}: must be {op} {e.validator_value}, got {_show(inst)}", loc)
    if v in ("minItems", "maxItems"):
        lo = e.schema.get("minItems")
        hi = e.schema.get("maxItems")
        n = f"{lo}" if lo == hi else (f"at least {lo}" if v == "minItems" else f"at most {hi}")
        count = lo if v == "minItems" else hi
        return SpecError(f"{where}: expected {n} item{'s' if count != 1 else ''}, got "
                         f"{len(inst)}", loc)
    if v in ("anyOf", "oneOf"):
        desc = e.schema.get("description", "")
        return SpecError(f"{where}: {_show(inst)} is not valid here", loc,
                         hint=desc.split(".")[0] if desc else None)
    if v == "pattern":
        return SpecError(f"{where}: {_show(inst)} is not in the expected form", loc,
                         hint=e.schema.get("description", "").split(".")[0] or None)
    return SpecError(f"{where}: {e.message}", loc)


# --- design-space forms (read by frontend/yaml_space.py; refused here) ---------------

SPACE_KEYS = ("choices", "require")  # top-level keys only a space has
_REF = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)$")


def choice_node(v: Any) -> Optional[str]:
    """``"choice"`` or ``"range"`` when ``v`` is written as one, else None."""
    if isinstance(v, dict) and len(v) == 1:
        key = next(iter(v))
        if key in ("choice", "range") and isinstance(v[key], list):
            return key
    return None


def ref_name(v: Any) -> Optional[str]:
    """``w`` for the string ``$w``, else None."""
    m = _REF.match(v) if isinstance(v, str) else None
    return m.group(1) if m else None


def first_space_path(data: Dict[str, Any]) -> Optional[Path]:
    """Where the document first writes a choice, a ``$name``, ``choices:`` or ``require:``."""
    for key in data:
        if key in SPACE_KEYS:
            return (key,)
    return _first_choice(data)


def _first_choice(value: Any) -> Optional[Path]:
    """The path (inside ``value``) of its first choice or ``$name``, or None."""
    found: List[Path] = []

    def visit(v: Any, p: Path) -> bool:
        if not found and (choice_node(v) or ref_name(v)):
            found.append(p)
        return not found

    _walk(value, (), visit)
    return found[0] if found else None


def _walk(v: Any, p: Path, visit: Any) -> None:
    """Visit every value in document order; ``visit`` returns False to skip its inside."""
    if not visit(v, p):
        return
    if isinstance(v, dict):
        for k, x in v.items():
            _walk(x, p + (k,), visit)
    elif isinstance(v, list):
        for i, x in enumerate(v):
            _walk(x, p + (i,), visit)



# --- building the IR -------------------------------------------------------------------

def parse_yaml(text: str, path: str) -> ModelSpec:
    """Parse a YAML spec into the IR; raises SpecError located in the YAML text."""
    data, doc = read_yaml(text, path)
    found = first_space_path(data)
    if found is not None:
        raise SpecError("this is a design space (it holds a choice, a $name, choices: or "
                        "require:), not one model",
                        doc.key_loc(found) if len(found) == 1 else doc.loc(found),
                        hint="read it with `mfdsl space` or `mfdsl sample` (docs/spaces.md)")
    validate(data, doc)
    return _Builder(doc).model(data)


def parse_count(v: Any) -> int:
    """``2000000`` or ``"2M"`` -> 2000000 (limits are written either way); exact."""
    if isinstance(v, str):
        from decimal import Decimal

        return int(Decimal(v[:-1]) * COUNT_SUFFIX[v[-1]])
    return v


class _Builder:
    """Schema-valid data -> IR nodes, recording where each field was written."""

    def __init__(self, doc: _Document) -> None:
        self.doc = doc

    def _set(self, node: Any, fld: str, value: Any, p: Path) -> None:
        setattr(node, fld, value)
        node.locs[fld] = self.doc.loc(p)

    def model(self, d: Dict[str, Any]) -> ModelSpec:
        spec = ModelSpec()
        spec.locs[""] = self.doc.loc(())
        self._set(spec, "name", d["model"], ("model",))
        inp = d.get("input") or {}
        if "channels" in inp:
            self._set(spec, "in_chans", inp["channels"], ("input", "channels"))
        if "size" in inp:
            size = inp["size"]
            hw = tuple(size) if isinstance(size, list) else (size, size)
            self._set(spec, "img_size", hw, ("input", "size"))
        if "classes" in d:
            self._set(spec, "num_classes", d["classes"], ("classes",))
        if "stem" in d:
            base = default_stem()
            self._set(spec, "stem", self.downsample(d["stem"], base, ("stem",)), ("stem",))
        defaults = d.get("defaults") or {}
        spec.stages = [self.stage(i, st, defaults) for i, st in enumerate(d["stages"])]
        spec.locs["stages"] = self.doc.loc(("stages",))
        for key in ("output_norm", "head"):
            if key in d:
                self._set(spec, key, self.call(d[key], (key,)), (key,))
        if "dense" in d:
            self._set(spec, "dense", self.dense(d["dense"] or {}, ("dense",)), ("dense",))
        for key, fld, cls in (("eval", "eval", EvalSpec), ("limits", "limits", LimitsSpec),
                              ("train", "recipe", RecipeSpec)):
            if key in d:
                self._set(spec, fld, self.settings_block(cls, d[key] or {}, (key,)), (key,))
        return spec

    def dense(self, d: Dict[str, Any], p: Path) -> DenseSpec:
        """``dense: {outputs: [...], norm: N, stageK: N}`` (keys checked by the schema)."""
        node = DenseSpec()
        node.locs[""] = self.doc.loc(p)
        for k, v in d.items():
            if k == "outputs":
                self._set(node, "outputs", tuple(v), p + (k,))
            elif k == "norm":
                self._set(node, "norm", self.call(v, p + (k,)), p + (k,))
            else:  # stage<i>
                node.norms[int(k[len("stage"):])] = self.call(v, p + (k,))
                node.locs[k] = self.doc.loc(p + (k,))
        return node

    def settings_block(self, cls: type, d: Dict[str, Any], p: Path) -> Any:
        """An ``eval`` / ``limits`` / ``train`` mapping: every key is a declared setting."""
        node = cls()
        node.locs[""] = self.doc.loc(p)
        by_key = {meta.key or name: (name, meta) for name, meta, _ in settings_of(cls)}
        for k, v in d.items():
            name, meta = by_key[k]  # the schema admits only these keys
            self._set(node, name, self.value(meta, v, p + (k,)), p + (k,))
        return node

    def value(self, meta: Any, v: Any, p: Path) -> Any:
        """A schema-valid setting value as the IR holds it."""
        if meta.optional and _is_none(v):
            return None
        if meta.is_component:
            return self.call(v, p)
        if meta.type == COUNT:
            return parse_count(v)
        if isinstance(v, list):
            return tuple(v)
        return v

    def stage(self, i: int, d: Dict[str, Any], defaults: Dict[str, Any]) -> StageSpec:
        p: Path = ("stages", i)
        st = StageSpec()
        st.locs[""] = self.doc.loc(p)
        # Settings from `defaults:` first, then the stage's own; each located where written.
        for src, base in ((defaults, ("defaults",)), (d, p)):
            if "mixer" in src:
                m = src["mixer"]
                ms = m if isinstance(m, list) else [m]
                mp = base + ("mixer",)
                calls = [self.call(x, mp + (j,) if isinstance(m, list) else mp)
                         for j, x in enumerate(ms)]
                self._set(st, "mixers", calls, mp)
            for name in ("depth", "width") + STAGE_SETTINGS:
                meta = setting_of(StageSpec, name)
                key = meta.key or name
                holder = (src.get(meta.group) or {}) if meta.group else src
                if key in holder:
                    vp = base + ((meta.group, key) if meta.group else (key,))
                    self._set(st, name, self.value(meta, holder[key], vp), vp)
        # Stage 0 is downsampled by the stem; later stages by default_downsample().
        if "downsample" in d and i == 0 and not _is_none(d["downsample"]):
            raise SpecError("stage 0 is downsampled by the stem; set `stem:` instead",
                            self.doc.key_loc(p + ("downsample",)),
                            hint="`downsample:` applies to stages 1 and later")
        if i > 0:
            st.downsample = default_downsample()
            for src, base in ((defaults, ("defaults",)), (d, p)):
                if "downsample" not in src:
                    continue
                dp = base + ("downsample",)
                v = src["downsample"]
                if _is_none(v):
                    st.downsample = None
                else:
                    start = st.downsample if st.downsample is not None else default_downsample()
                    st.downsample = self.downsample(v, start, dp)
                st.locs["downsample"] = self.doc.loc(dp)
        return st

    def downsample(self, d: Dict[str, Any], base: DownsampleSpec, p: Path) -> DownsampleSpec:
        ds = DownsampleSpec(kernel=base.kernel, stride=base.stride, padding=base.padding,
                            bias=base.bias, pre_norm=base.pre_norm, post_norm=base.post_norm)
        ds.locs = dict(base.locs)
        ds.locs[""] = self.doc.loc(p)
        by_key = {meta.key or name: (name, meta) for name, meta, _ in settings_of(DownsampleSpec)}
        for k, v in d.items():
            name, meta = by_key[k]
            self._set(ds, name, self.value(meta, v, p + (k,)), p + (k,))
        return ds

    def call(self, v: Any, p: Path) -> Call:
        """A component reference: ``name`` or ``{name: {arg: value}}``."""
        c = Call()
        c.locs[""] = self.doc.loc(p)
        if isinstance(v, str):
            c.name = v
            c.locs["name"] = self.doc.loc(p)
            return c
        (name, args), = v.items()
        c.name = name
        c.locs["name"] = self.doc.key_loc(p + (name,))
        for k, a in (args or {}).items():
            c.args[k] = self.arg(a, p + (name, k))
            c.locs[k] = self.doc.loc(p + (name, k))
        return c

    def arg(self, v: Any, p: Path) -> Any:
        """Argument values are literal; a one-key mapping is a nested component."""
        if isinstance(v, dict):
            if len(v) != 1 or not isinstance(next(iter(v.values())), (dict, type(None))):
                raise SpecError(f"{show_path(p)}: a nested component is written "
                                "{name: {arg: value}}", self.doc.loc(p),
                                hint="e.g. {layernorm: {eps: 1.0e-5}}")
            return self.call(v, p)
        if isinstance(v, list):
            return [self.arg(x, p + (j,)) for j, x in enumerate(v)]
        return v


def _is_none(v: Any) -> bool:
    return v is None or v in NONE_WORDS
