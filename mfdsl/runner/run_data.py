"""The one opening of ``--data``: training, its dry run and ``mfdsl eval`` read it here.

Whatever form the data takes (an ImageFolder tree, parquet or tar shards:
:mod:`mfdsl.data.layout`), a run gets its splits as sources with the same checks and the
same wording: a missing folder or split, more classes than the head has, a validation
class the training split lacks, a resumed run's class list changed. The dry run opens the
same sources (listing files, decoding nothing), so it refuses what the real run refuses.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from ..data.layout import DataLayout, detect_layout, open_source
from ..data.sources import Source, UnknownClassError
from .errors import DataError

BUILT_IN = "the built-in TinyShapes data"


@dataclass(frozen=True)
class DataPlan:
    """What a run reads: the same record in the dry run and in ``plan.json``."""

    root: str  # the --data folder, or the built-in data's
    form: str  # folder | parquet | tar | built-in | --dataset-size
    train: str  # where the training split is
    val: Optional[str]
    train_images: int
    val_images: Optional[int]
    classes: Optional[int]  # training classes (None when only a size was given)

    @property
    def embedded(self) -> bool:
        """The built-in data (its own batch cap and crop scale apply)."""
        return self.form == "built-in"

    def to_json(self) -> Dict[str, Any]:
        return {"root": self.root, "form": self.form, "train": self.train, "val": self.val,
                "train_images": self.train_images, "val_images": self.val_images,
                "classes": self.classes}

    def describe(self) -> str:
        where = BUILT_IN if self.embedded else self.root
        return (f"{where} ({self.form}; {self.train_images} train / {self.val_images or 0} "
                "val images)")


@dataclass
class RunData:
    """The opened splits of a run and what the log should say about them."""

    plan: DataPlan
    train: Source
    val: Optional[Source]
    notes: List[str] = field(default_factory=list)


def missing_split(root: str, split: str, layout: Optional[DataLayout], option: str) -> DataError:
    """The one wording for a split that ``--data`` lacks."""
    found = f"found {layout.describe()}; " if layout is not None else ""
    return DataError(f"--data {root}: no '{split}' split ({found}expected {split}/<class>/"
                     f"<images>, or parquet/tar shards of that split); choose one with "
                     f"{option}")


def data_root(data: Optional[str], *, generate: bool = True) -> Optional[str]:
    """The folder ``--data`` names (checked), or the built-in data's (generated on first use;
    None if it is not there and ``generate`` is off)."""
    if data is None:
        from ..data.tinyshapes import ensure_tinyshapes, tinyshapes_complete, tinyshapes_folder

        if generate:
            return str(ensure_tinyshapes())
        folder = tinyshapes_folder()
        return str(folder) if tinyshapes_complete(folder) else None
    if not os.path.isdir(data):
        raise DataError(f"--data {data}: no such folder")
    return data


def open_run_data(data: Optional[str], train_split: str, val_split: str, *,
                  num_classes: int, classes: Optional[Sequence[str]] = None,
                  generate: bool = True) -> RunData:
    """The training and validation splits of ``data`` (None: the built-in data).

    ``classes``: a resumed run's class list, which the training split must repeat.
    ``generate=False`` (the dry run) writes nothing: without the built-in data on disk its
    known sizes stand in for it."""
    root = data_root(data, generate=generate)
    if root is None:  # the built-in data, not made yet: its known make-up stands in
        from ..data.tinyshapes import (CLASSES, DEFAULT_TRAIN_PER_CLASS, DEFAULT_VAL_PER_CLASS,
                                       tinyshapes_folder)

        _check_class_count(len(CLASSES), num_classes, BUILT_IN)
        folder = tinyshapes_folder()
        plan = DataPlan(str(folder), "built-in", str(folder / train_split),
                        str(folder / val_split), len(CLASSES) * DEFAULT_TRAIN_PER_CLASS,
                        len(CLASSES) * DEFAULT_VAL_PER_CLASS, len(CLASSES))
        return RunData(plan, None, None)  # type: ignore[arg-type] - nothing to read
    layout = detect_layout(root, (train_split, val_split))
    train_where = layout.where(train_split)
    if train_where is None:
        raise missing_split(root, train_split, layout, "--train-split")
    train = open_source(layout, train_split)
    assert train is not None
    if classes is not None and list(train.classes) != list(classes):
        raise DataError(_class_mismatch(train_where, list(train.classes), list(classes)))
    _check_class_count(len(train.classes), num_classes, train_where)
    val_where = layout.where(val_split)
    val = None
    if val_where is not None:
        # Labels are positions in the training classes: a val split may lack a class (noted;
        # the other labels stay right), but one the model is not trained on is an error.
        try:
            val = open_source(layout, val_split, train.classes)
        except UnknownClassError as exc:
            raise DataError(f"{exc.message}; the class list is that of the training split "
                            f"{train_where}") from None
    notes = [f"note: {src.root}: {n}" for src in (train, val) if src is not None
             for n in src.notes[:5]]
    if val is not None and val.missing_classes:
        miss = val.missing_classes
        notes.append(f"note: {val_where} has no folder for {len(miss)} of the "
                     f"{len(train.classes)} training classes ({', '.join(map(repr, miss[:5]))}"
                     f"{' ...' if len(miss) > 5 else ''})")
    if len(train.classes) < num_classes:
        notes.append(f"note: {len(train.classes)} class folders for a {num_classes}-class head")
    form = "built-in" if data is None else layout.kind
    plan = DataPlan(root, form, train_where, val_where, len(train),
                    len(val) if val is not None else None, len(train.classes))
    return RunData(plan, train, val, notes)


def open_eval_split(data: Optional[str], split: str, classes: Optional[Sequence[str]] = None
                    ) -> Source:
    """The split ``mfdsl eval`` scores: ``data``'s ``split`` (a split folder or shards), or
    ``data`` itself when it is a folder of class folders. ``classes``: the run's class list
    (labels are positions in it; a class outside it is an error)."""
    from ..data.folder import FolderSource
    from ..data.layout import LayoutError

    root = data_root(data)
    assert root is not None
    if os.path.isdir(os.path.join(root, split)):
        return FolderSource(os.path.join(root, split), classes)
    try:
        layout: Optional[DataLayout] = detect_layout(root, (split, "test"))
    except LayoutError as exc:
        if exc.found:  # mixed forms
            raise
        layout = None  # no split folders and no shards: class folders, or nothing
    if layout is not None and layout.kind != "folder":
        if layout.find(split) is None:
            raise missing_split(root, split, layout, "--split")
        source = open_source(layout, split, classes)
        assert source is not None
        return source
    if layout is not None:
        # Split folders but not this one: scoring the root would take 'train' etc. for
        # class folders, a meaningless score.
        raise missing_split(root, split, layout, "--split")
    return FolderSource(root, classes)


def _check_class_count(found: int, num_classes: int, where: str) -> None:
    if found > num_classes:
        raise DataError(f"{where}: the training data has {found} classes but the spec's head "
                        f"has num_classes {num_classes}")


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
