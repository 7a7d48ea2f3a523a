"""Reading the ``.mf`` syntax tree into the IR, keyword by keyword.

Which keyword sets which field, with which type, comes from the shared vocabulary
(:mod:`.mf_vocab`, itself derived from the IR's field metadata), so that unknown keywords,
duplicates and values of the wrong type are reported at their own line and column with a
hint. Names of components (mixers, norms, ...) and value ranges are left to
:mod:`mfdsl.checks`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Dict, Iterator, List, Optional, Tuple

from ..errors import Loc, SpecError, nearest
from ..ir import (unknown_key_hint, BOOL, COUNT, FLOAT, FLOATS, INT, STR, Call, DenseSpec, DownsampleSpec,
                  ModelSpec,
                  Setting, StageSpec, default_downsample, default_stem, setting_of)
from .mf_syntax import Atom, Block, CallNode, Line, ListNode, TupleNode, Width
from .mf_vocab import (BLOCKS, CONV_ARGS, DOWNSAMPLE_NORMS, MODEL_KEYWORDS, RESERVED_NAMES,
                       STAGE_GROUPS, STAGE_SETTING_WORDS, block_keys, stage_field)

# One-word spellings of grouped stage settings: `mlp_ratio 4` for `mlp ratio 4`.
GROUP_ALIASES = {f"{g}_{k}": name for g, keys in STAGE_GROUPS.items() for k, name in keys.items()}
STAGE_WORDS_READ = STAGE_SETTING_WORDS + tuple(GROUP_ALIASES)
_GROUP_KEYS = tuple(k for keys in STAGE_GROUPS.values() for k in keys)


def _describe(item: Any) -> str:
    if isinstance(item, Atom):
        if item.kind == "name":
            return {"true": "true", "false": "false", "none": "none"}.get(
                item.value, f"the name '{item.value}'")
        if item.kind == "str":
            return f"the string {item.text}"
        if item.kind == "size":
            return f"the size {item.text}"
        if item.kind == "depth":
            return f"the block count {item.text}"
        return f"the number {item.text}"
    if isinstance(item, Width):
        return f"the width @{item.value}"
    if isinstance(item, CallNode):
        return f"the call {item.name}(...)"
    if isinstance(item, TupleNode):
        return "a tuple ( ... )"
    if isinstance(item, ListNode):
        return "a list [ ... ]"
    if isinstance(item, Block):
        return "a { ... } block"
    return "nothing"


def _is_word(item: Any, *words: str) -> bool:
    return isinstance(item, Atom) and item.kind == "name" and (not words or item.value in words)


class _Cursor:
    """Reads the items of one line (or of a block's lines run together) left to right."""

    def __init__(self, items: List[Any], end: Loc) -> None:
        self.items = items
        self.i = 0
        self.end = end  # where "missing value" errors point

    def peek(self) -> Any:
        return self.items[self.i] if self.i < len(self.items) else None

    def take(self, what: str, after: str) -> Any:
        item = self.peek()
        if item is None:
            raise SpecError(f"expected {what} after {after}", self.end)
        self.i += 1
        return item

    def done(self) -> bool:
        return self.i >= len(self.items)


def _line_end(line: Line) -> Loc:
    last = line.items[-1]
    return last.end


class _Seen:
    """Remembers where each setting was first written, to report duplicates."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.where: Dict[str, Loc] = {}

    def add(self, key: str, loc: Loc, shown: Optional[str] = None) -> None:
        if key in self.where:
            first = self.where[key]
            raise SpecError(f"{shown or key} is set twice {self.what}", loc,
                            hint=f"first set at line {first.line}, column {first.column}; "
                                 "remove one")
        self.where[key] = loc


@dataclass
class _Setting:
    value: Any
    loc: Loc  # where the value was written


@dataclass
class _DownsampleSetting:
    """`downsample none` (changes is None) or changes to a DownsampleSpec."""

    changes: Optional[Dict[str, _Setting]]
    loc: Loc


@dataclass
class _StageLine:
    loc: Loc
    mixers: List[Call]
    mixers_loc: Loc
    depth: int
    depth_loc: Loc
    width: int
    width_loc: Loc
    settings: Dict[str, Any] = field(default_factory=dict)


class Interpreter:
    def __init__(self, path: str) -> None:
        self.path = path

    # -- the model ---------------------------------------------------------------------

    def model(self, kw_loc: Loc, name: Atom, body: Block) -> ModelSpec:
        spec = ModelSpec(name=name.value)
        spec.locs[""] = kw_loc
        spec.locs["name"] = name.loc
        seen = _Seen("in the model")
        defaults: Dict[str, Any] = {}  # model-level stage settings
        stages: List[_StageLine] = []
        for line in body.lines:
            head = line.items[0]
            if not _is_word(head) or head.value in RESERVED_NAMES:
                raise SpecError(f"expected a setting name at the start of the line, got "
                                f"{_describe(head)}", head.loc,
                                hint="each line starts with a keyword such as stage, "
                                     "input or train")
            key = head.value
            cur = _Cursor(line.items[1:], _line_end(line))
            if key == "stage":
                stages.append(self.stage_line(head, cur))
                continue
            if key not in MODEL_KEYWORDS and key not in GROUP_ALIASES:
                raise self.unknown_model_keyword(head)
            if key in STAGE_WORDS_READ:
                self.stage_setting(head, cur, defaults, seen, allow_downsample=True)
                self.end_of_line(cur, key)
                continue
            seen.add(key, head.loc)
            if key == "input":
                self.input(spec, cur, head)
            elif key == "classes":
                item = cur.take("the number of classes", "classes")
                spec.num_classes = self.integer(item, "classes")
                spec.locs["num_classes"] = item.loc
            elif key == "stem":
                spec.stem = self.downsample(head, cur, default_stem(), allow_none=False).changes
                spec.locs["stem"] = head.loc
            elif key == "dense":
                spec.dense = self.dense(head, cur)
                spec.locs["dense"] = head.loc
            elif key in ("output_norm", "head"):
                item = cur.take(f"a {'norm' if key == 'output_norm' else 'head'}", key)
                setattr(spec, key, self.component(item, key))
                spec.locs[key] = item.loc
            elif key in BLOCKS:
                fld, cls = BLOCKS[key]
                setattr(spec, fld, self.settings_block(head, cur, cls))
                spec.locs[fld] = head.loc
            self.end_of_line(cur, key)
        spec.stages = [self.build_stage(i, s, defaults) for i, s in enumerate(stages)]
        if stages:
            spec.locs["stages"] = stages[0].loc
        return spec

    def unknown_model_keyword(self, head: Atom) -> SpecError:
        word = head.value
        owners = {k: key for key, (_, cls) in BLOCKS.items() for k in block_keys(cls)}
        groups = {k: g for g, keys in STAGE_GROUPS.items() for k in keys}
        groups.update({k: "downsample" for k in DOWNSAMPLE_NORMS})
        if word in owners:
            what = {"train": "a training setting", "eval": "an evaluation setting",
                    "limits": "a size limit"}.get(owners[word], "a setting")
            hint = f"'{word}' is {what}: put it inside {owners[word]} {{ ... }}"
        elif word in groups:
            owner = groups[word]
            hint = f"'{word}' belongs after '{owner}', as in `{owner} {word} ...`"
        else:
            guess = nearest(word, MODEL_KEYWORDS)
            hint = f"did you mean '{guess}'?" if guess else \
                "known settings: " + ", ".join(MODEL_KEYWORDS)
        return SpecError(f"unknown setting '{word}'", head.loc, hint=hint)

    def end_of_line(self, cur: _Cursor, key: str) -> None:
        extra = cur.peek()
        if extra is not None:
            hint = None
            if _is_word(extra) and extra.value in MODEL_KEYWORDS:
                hint = f"start '{extra.value}' on a new line"
            raise SpecError(f"unexpected {_describe(extra)} after the {key} setting",
                            extra.loc, hint=hint)

    def input(self, spec: ModelSpec, cur: _Cursor, head: Atom) -> None:
        item = cur.take("the input size, like 3x224x224", "input")
        if isinstance(item, Atom) and item.kind == "size" and len(item.value) in (2, 3):
            dims = item.value
            if len(dims) == 3:
                spec.in_chans = dims[0]
                spec.locs["in_chans"] = item.loc
            spec.img_size = (dims[-2], dims[-1])
            spec.locs["img_size"] = item.loc
            return
        raise SpecError(f"input must be channels x height x width like 3x224x224, got "
                        f"{_describe(item)}", item.loc)

    def dense(self, head: Atom, cur: _Cursor) -> DenseSpec:
        """`dense outputs (0, 1, 2, 3) [norm N] [stageK N ...]`."""
        node = DenseSpec()
        node.locs[""] = head.loc
        seen = _Seen("in dense")
        example = "e.g. `dense outputs (0, 1, 2, 3) norm modified_layernorm stage0 identity`"
        while not cur.done():
            word = cur.take("", "")
            if _is_word(word, "outputs"):
                seen.add("outputs", word.loc)
                item = cur.take("the stage indices, like (0, 1, 2, 3)", "outputs")
                if not isinstance(item, TupleNode) or not item.items:
                    raise SpecError(f"dense outputs must be a tuple of stage indices like "
                                    f"(0, 1, 2, 3), got {_describe(item)}", item.loc)
                node.outputs = tuple(self.integer(x, "each dense output") for x in item.items)
                node.locs["outputs"] = item.loc
            elif _is_word(word, "norm"):
                seen.add("norm", word.loc)
                item = cur.take("a norm", "norm")
                node.norm = self.component(item, "the dense norm")
                node.locs["norm"] = item.loc
            elif _is_word(word) and re.fullmatch(r"stage[0-9]+", word.value):
                seen.add(word.value, word.loc)
                item = cur.take("a norm", word.value)
                stage = int(word.value[len("stage"):])
                node.norms[stage] = self.component(item, f"the {word.value} dense norm")
                node.locs[word.value] = item.loc
            else:
                raise SpecError(f"expected outputs, norm or stage<i> in dense, got "
                                f"{_describe(word)}", word.loc, hint=example)
        if "outputs" not in seen.where:
            raise SpecError("dense needs its outputs", head.loc, hint=example)
        return node

    # -- stages --------------------------------------------------------------------------

    def stage_line(self, head: Atom, cur: _Cursor) -> _StageLine:
        example = "e.g. `stage sepconv x3 @64`"
        pattern = cur.take("a token mixer", "stage")
        if isinstance(pattern, ListNode):
            if not pattern.items:
                raise SpecError("the mixer list is empty", pattern.loc,
                                hint="name at least one mixer, e.g. [sepconv, attention]")
            mixers = [self.component(m, "mixer") for m in pattern.items]
        elif (isinstance(pattern, Atom) and pattern.kind == "depth") or isinstance(pattern, Width):
            raise SpecError("expected a token mixer before the block count", pattern.loc,
                            hint=example)
        else:
            mixers = [self.component(pattern, "mixer")]
        depth_item = cur.take("the number of blocks, like x3", "the token mixer")
        if not (isinstance(depth_item, Atom) and depth_item.kind == "depth"):
            hint = example
            if isinstance(depth_item, Atom) and depth_item.kind == "int":
                hint = f"write x{depth_item.value}"
            raise SpecError(f"expected the number of blocks as x<integer>, got "
                            f"{_describe(depth_item)}", depth_item.loc, hint=hint)
        width_item = cur.take("the width, like @64", "the block count")
        if not isinstance(width_item, Width):
            hint = example
            if isinstance(width_item, Atom) and width_item.kind == "int":
                hint = f"write @{width_item.value}"
            raise SpecError(f"expected the stage width as @<integer>, got "
                            f"{_describe(width_item)}", width_item.loc, hint=hint)
        st = _StageLine(head.loc, mixers, pattern.loc, depth_item.value, depth_item.loc,
                        width_item.value, width_item.loc)
        seen = _Seen("in this stage")
        while not cur.done():
            item = cur.peek()
            if isinstance(item, Block):  # settings continued in a { } block
                cur.i += 1
                if not cur.done():
                    raise SpecError(f"unexpected {_describe(cur.peek())} after the stage's "
                                    "{ } block", cur.peek().loc)
                for line in item.lines:
                    sub = _Cursor(line.items, _line_end(line))
                    while not sub.done():
                        self.stage_setting(sub.take("a setting", "{"), sub, st.settings, seen,
                                           allow_downsample=True)
                break
            cur.i += 1
            self.stage_setting(item, cur, st.settings, seen, allow_downsample=True)
        return st

    def stage_setting(self, head: Any, cur: _Cursor, out: Dict[str, Any], seen: _Seen,
                      allow_downsample: bool) -> None:
        """Read one stage setting (`norm X`, `mlp ratio 4 ...`, ...) into ``out``."""
        if not _is_word(head) or head.value not in STAGE_WORDS_READ:
            if _is_word(head):
                guess = nearest(head.value, STAGE_SETTING_WORDS + _GROUP_KEYS)
                group_of = {k: g for g, keys in STAGE_GROUPS.items() for k in keys}
                if head.value in group_of:
                    hint = f"write `{group_of[head.value]} {head.value} ...`"
                elif guess in group_of:
                    hint = f"did you mean `{group_of[guess]} {guess}`?"
                elif guess:
                    hint = f"did you mean '{guess}'?"
                else:
                    hint = "stage settings: " + ", ".join(STAGE_SETTING_WORDS)
                raise SpecError(f"unknown stage setting '{head.value}'", head.loc, hint=hint)
            raise SpecError(f"expected a stage setting, got {_describe(head)}", head.loc,
                            hint="stage settings: " + ", ".join(STAGE_SETTING_WORDS))
        key = head.value
        if key in STAGE_GROUPS:
            keys = STAGE_GROUPS[key]
            n = 0
            while _is_word(cur.peek(), *keys):
                sub = cur.take("", "")
                self.one_stage_setting(keys[sub.value], sub, cur, out, seen,
                                       shown=f"{key} {sub.value}")
                n += 1
            if n == 0:
                nxt = cur.peek()
                names = list(keys)
                raise SpecError(f"expected {', '.join(names[:-1])} or {names[-1]} after {key}",
                                nxt.loc if nxt is not None else cur.end,
                                hint="e.g. `mlp ratio 4 act starrelu bias false`"
                                if key == "mlp" else None)
            return
        if key == "downsample":
            seen.add("downsample", head.loc)
            out["downsample"] = self.downsample(head, cur, None, allow_none=True)
            return
        self.one_stage_setting(GROUP_ALIASES.get(key) or stage_field(key), head, cur, out,
                               seen, shown=key)

    def one_stage_setting(self, name: str, head: Atom, cur: _Cursor, out: Dict[str, Any],
                          seen: _Seen, shown: Optional[str] = None) -> None:
        shown = shown or name
        seen.add(name, head.loc, shown)
        meta = setting_of(StageSpec, name)
        item = cur.take(expected_text(meta), shown)
        out[name] = _Setting(self.value(meta, item, shown), item.loc)

    def build_stage(self, i: int, line: _StageLine, defaults: Dict[str, Any]) -> StageSpec:
        st = StageSpec(depth=line.depth, width=line.width, mixers=line.mixers)
        st.locs.update({"": line.loc, "depth": line.depth_loc, "width": line.width_loc,
                        "mixers": line.mixers_loc})
        for source in (defaults, line.settings):
            for key, s in source.items():
                if key == "downsample":
                    continue
                setattr(st, key, s.value)
                st.locs[key] = s.loc
        if i == 0:
            if "downsample" in line.settings:
                raise SpecError("the first stage is downsampled by the stem", line.settings[
                    "downsample"].loc, hint="set it with `stem conv(...)` instead")
            return st
        model_ds = defaults.get("downsample")
        base: Optional[DownsampleSpec] = default_downsample()
        if model_ds is not None:
            base = self.apply_downsample(default_downsample(), model_ds)
            st.locs["downsample"] = model_ds.loc
        own = line.settings.get("downsample")
        if own is not None:
            base = self.apply_downsample(base if base is not None else default_downsample(), own)
            st.locs["downsample"] = own.loc
        st.downsample = base
        return st

    @staticmethod
    def apply_downsample(base: DownsampleSpec, s: _DownsampleSetting) -> Optional[DownsampleSpec]:
        if s.changes is None:
            return None
        ds = DownsampleSpec(kernel=base.kernel, stride=base.stride, padding=base.padding,
                            bias=base.bias, pre_norm=base.pre_norm, post_norm=base.post_norm)
        ds.locs = dict(base.locs)
        ds.locs[""] = s.loc
        for key, setting in s.changes.items():
            setattr(ds, key, setting.value)
            ds.locs[key] = setting.loc
        return ds

    # -- downsampling ------------------------------------------------------------------

    def downsample(self, head: Atom, cur: _Cursor, base: Optional[DownsampleSpec],
                   allow_none: bool) -> Any:
        """`conv(kernel=..) pre_norm X post_norm Y` or `none`.

        With ``base`` (the stem) returns a _DownsampleSetting whose ``changes`` is the
        finished DownsampleSpec; without, the changes to apply later.
        """
        what = head.value
        nxt = cur.peek()
        if _is_word(nxt, "none"):
            cur.i += 1
            if not allow_none:
                raise SpecError(f"the {what} cannot be none", nxt.loc,
                                hint="a model needs a stem; change its conv or norms instead")
            return _DownsampleSetting(None, head.loc)
        changes: Dict[str, _Setting] = {}
        seen = _Seen(f"in this {what}")
        n = 0
        if isinstance(nxt, CallNode) or _is_word(nxt, "conv"):
            cur.i += 1
            n += 1
            name = nxt.name if isinstance(nxt, CallNode) else nxt.value
            if name != "conv":
                raise SpecError(f"a {what} is a strided conv: expected conv(...), got "
                                f"{name}(...)", nxt.loc,
                                hint="e.g. conv(kernel=3, stride=2, padding=1)")
            for arg_name, value, loc in (nxt.args if isinstance(nxt, CallNode) else []):
                if arg_name is None:
                    raise SpecError("conv arguments are written name=value", loc,
                                    hint="e.g. conv(kernel=3, stride=2, padding=1)")
                if arg_name not in CONV_ARGS:
                    guess = nearest(arg_name, CONV_ARGS)
                    raise SpecError(f"unknown conv argument '{arg_name}'", loc,
                                    hint=f"did you mean '{guess}'?" if guess else
                                    "conv takes " + ", ".join(CONV_ARGS))
                seen.add(arg_name, loc, f"conv argument '{arg_name}'")
                v = self.value(CONV_ARGS[arg_name], value, f"{what} {arg_name}")
                changes[arg_name] = _Setting(v, value.loc)
        while _is_word(cur.peek(), *DOWNSAMPLE_NORMS):
            key_item = cur.take("", "")
            n += 1
            seen.add(key_item.value, key_item.loc)
            item = cur.take("a norm or none", key_item.value)
            value = None if _is_word(item, "none") else self.component(item, key_item.value)
            changes[key_item.value] = _Setting(value, item.loc)
        if n == 0:
            bad = cur.peek()
            raise SpecError(f"expected conv(...), pre_norm, post_norm{' or none' if allow_none else ''}"
                            f" after {what}", bad.loc if bad is not None else cur.end,
                            hint="e.g. `downsample conv(kernel=3, stride=2, padding=1) "
                                 "pre_norm layernorm(eps=1e-6)`")
        if base is None:
            return _DownsampleSetting(changes, head.loc)
        done = self.apply_downsample(base, _DownsampleSetting(changes, head.loc))
        return _DownsampleSetting(done, head.loc)  # type: ignore[arg-type]

    # -- eval / limits / train blocks ------------------------------------------------------

    def block_pairs(self, head: Atom, cur: _Cursor) -> Iterator[Tuple[Atom, _Cursor]]:
        """Yield (key, cursor positioned at its value) for a `key { k v  k v ... }` block."""
        blk = cur.take("a { ... } block", head.value)
        if not isinstance(blk, Block):
            raise SpecError(f"expected '{{' after {head.value}, got {_describe(blk)}", blk.loc,
                            hint=f"e.g. {head.value} {{ {_EXAMPLES[head.value]} }}")
        for line in blk.lines:
            sub = _Cursor(line.items, _line_end(line))
            while not sub.done():
                key = sub.take("", "")
                if isinstance(key, CallNode):
                    raise SpecError(f"'{key.name}(' reads as a call: put a space before '(' "
                                    f"to give {key.name} a tuple", key.loc,
                                    hint=f"{key.name} (...)")
                if not _is_word(key) or key.value in RESERVED_NAMES:
                    raise SpecError(f"expected {head.value} setting name, got "
                                    f"{_describe(key)}", key.loc)
                yield key, sub

    def settings_block(self, head: Atom, cur: _Cursor, cls: type) -> Any:
        """`eval { ... }`, `limits { ... }`, `train { ... }`: keys from the IR metadata."""
        node = cls()
        node.locs[""] = head.loc
        keys = block_keys(cls)
        # The IR field name is accepted too where the key differs (`max_params 2G`).
        aliases = {name: (name, meta) for name, meta in keys.values() if name not in keys}
        word = head.value
        seen = _Seen(f"in {word}")
        for key, sub in self.block_pairs(head, cur):
            k = key.value
            if k not in keys and k in aliases:
                keys = {**keys, k: aliases[k]}
            if k not in keys:
                raise SpecError(f"unknown {_BLOCK_NOUN.get(word, word + ' setting')} '{k}'",
                                key.loc, hint=unknown_key_hint(k, keys))
            name, meta = keys[k]
            seen.add(name, key.loc, k)
            item = sub.take(expected_text(meta), k)
            shown = f"train {k}" if word == "train" else k
            setattr(node, name, self.value(meta, item, shown))
            node.locs[name] = item.loc
        return node

    def value(self, meta: Setting, item: Any, shown: str) -> Any:
        """A setting's value, read by its declared type."""
        if meta.optional and _is_word(item, "none") and meta.type != STR:
            return None
        t = meta.type
        if meta.is_component:
            if meta.optional and _is_word(item, "none"):
                return None
            return self.component(item, shown)
        if t == INT:
            return self.integer(item, shown)
        if t == FLOAT:
            return self.number(item, shown, allow_none=meta.optional)
        if t == BOOL:
            return self.boolean(item, shown)
        if t == STR:
            if meta.optional and _is_word(item, "none"):
                return None
            return self.text(item, shown, none_ok=meta.optional)
        if t == FLOATS:
            return self.number_tuple(item, shown)
        if t == COUNT:
            return self.count(item, shown)
        return self.literal(item)  # pragma: no cover - every declared type is above

    # -- values ----------------------------------------------------------------------------

    def integer(self, item: Any, what: str) -> int:
        if isinstance(item, Atom) and item.kind == "int":
            return item.value
        hint = None
        if isinstance(item, Atom) and item.kind == "float" and float(item.value).is_integer():
            hint = f"write {int(item.value)}"
        raise SpecError(f"{what} must be an integer, got {_describe(item)}", item.loc, hint=hint)

    def number(self, item: Any, what: str, allow_none: bool = False) -> Any:
        if isinstance(item, Atom) and item.kind in ("int", "float"):
            return item.value
        if allow_none and _is_word(item, "none"):
            return None
        raise SpecError(f"{what} must be a number{' or none' if allow_none else ''}, got "
                        f"{_describe(item)}", item.loc)

    def boolean(self, item: Any, what: str) -> bool:
        if _is_word(item, "true", "false"):
            return item.value == "true"
        raise SpecError(f"{what} must be true or false, got {_describe(item)}", item.loc)

    def text(self, item: Any, what: str, none_ok: bool = False) -> str:
        if isinstance(item, Atom) and (item.kind == "str" or
                                       (item.kind == "name" and item.value not in RESERVED_NAMES)):
            return item.value
        raise SpecError(f"{what} must be a name or a quoted string"
                        f"{' (or none)' if none_ok else ''}, got {_describe(item)}", item.loc)

    def number_tuple(self, item: Any, what: str) -> Tuple[Any, ...]:
        if isinstance(item, TupleNode):
            return tuple(self.number(x, f"each value of {what}") for x in item.items)
        if isinstance(item, CallNode):  # `mean(0.5, 0.5, 0.5)` written without a space
            raise SpecError(f"{what} takes a tuple: put a space before '('", item.loc,
                            hint=f"{what} (...)")
        raise SpecError(f"{what} must be a tuple of numbers like (0.5, 0.5, 0.5), got "
                        f"{_describe(item)}", item.loc)

    def count(self, item: Any, what: str) -> int:
        if isinstance(item, Atom) and item.kind == "int":
            value: Any = item.value
        elif isinstance(item, Atom) and item.kind == "si":
            value = item.value
        elif isinstance(item, Atom) and item.kind == "float":
            try:
                value = Decimal(item.text)
            except InvalidOperation:  # pragma: no cover - the grammar only lets numbers in
                value = Decimal(item.value)
        else:
            raise SpecError(f"{what} must be a count like 25M, 2G or 1T, got "
                            f"{_describe(item)}", item.loc)
        if value != int(value):
            raise SpecError(f"{what} must be a whole number, got {item.text}", item.loc)
        return int(value)

    def component(self, item: Any, what: str) -> Call:
        """A component reference: `layernorm` or `layernorm(eps=1e-6)`."""
        if isinstance(item, Atom) and item.kind == "name" and item.value not in RESERVED_NAMES:
            c = Call(name=item.value)
            c.locs[""] = item.loc
            return c
        if isinstance(item, CallNode):
            return self.call(item)
        hint = None
        if _is_word(item, "none"):
            hint = "write identity for no norm / activation" if what != "head" else \
                "a model needs a head; `linear` is the plainest"
        raise SpecError(f"expected a component name for {what}, like layernorm or "
                        f"attention(head_dim=32), got {_describe(item)}", item.loc, hint=hint)

    def call(self, node: CallNode) -> Call:
        c = Call(name=node.name)
        c.locs[""] = node.loc
        for name, value, loc in node.args:
            if name is None:
                raise SpecError(f"arguments of {node.name}(...) are written name=value", loc,
                                hint=f"e.g. {node.name}(eps=1e-6)" if node.name.endswith("norm")
                                else None)
            if name in c.args:
                first = c.locs[name]
                raise SpecError(f"argument '{name}' is given twice", loc,
                                hint=f"first given at line {first.line}, column {first.column}")
            c.args[name] = self.literal(value)
            c.locs[name] = loc
        return c

    def literal(self, item: Any) -> Any:
        """A call argument: a literal, a nested component, a tuple or a list."""
        if isinstance(item, Atom):
            if item.kind == "name":
                return RESERVED_NAMES.get(item.value, item.value)
            if item.kind in ("int", "float", "str"):
                return item.value
            if item.kind == "si":
                raise SpecError("K/M/G/T suffixes are only for limits", item.loc,
                                hint="write the number in full, e.g. 2e9")
            raise SpecError(f"{_describe(item)} cannot be an argument value", item.loc)
        if isinstance(item, CallNode):
            return self.call(item)
        if isinstance(item, TupleNode):
            return tuple(self.literal(x) for x in item.items)
        if isinstance(item, ListNode):
            return [self.literal(x) for x in item.items]
        raise SpecError(f"{_describe(item)} cannot be an argument value", item.loc)


_EXAMPLES = {
    "eval": "crop_pct 0.95  interpolation bicubic",
    "limits": "params 2G  macs 50G",
    "train": "optimizer adamw  lr 4e-3  epochs 300",
}
_BLOCK_NOUN = {"eval": "eval setting", "limits": "limit", "train": "train setting"}


def expected_text(meta: Setting) -> str:
    """What a setting's value looks like, for "expected ... after key" errors."""
    if meta.is_component:
        text = f"{'an' if meta.type[0] in 'aeiou' else 'a'} {meta.type}"
    else:
        text = {INT: "an integer", FLOAT: "a number", BOOL: "true or false",
                STR: "a name or a quoted string", FLOATS: "a tuple of numbers",
                COUNT: "a count like 2G"}.get(meta.type, "a value")
    return text + (" or none" if meta.optional else "")
