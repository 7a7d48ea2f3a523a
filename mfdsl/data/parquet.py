"""Parquet shards in the Hugging Face ``ILSVRC/imagenet-1k`` layout, read in place.

Columns: ``image`` (a struct with the encoded ``bytes`` and the original ``path``) and
``label`` (int64; -1 on the unlabelled test split). Random access goes through the parquet
row groups: the index is the row count of every row group (one int64 per row group, from
the footers) plus the label column (read alone: one int64 per sample); no Arrow cache or
conversion step. A worker reads the row group holding the sample page by page, up to the
batch of 8 rows holding it, and keeps its place: random access costs on average half a row
group (Hugging Face writes image datasets in row groups of ~100 rows), sequential reading
each page once.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import DataError
from .sources import Source, remap_labels, shard_class_names, stored_order_note

# Rows decoded at a time when reading a row group: a sample costs the pages up to its batch
# (not the whole group, ~11 MB for 100 ImageNet JPEGs); the following rows of the batch
# are then free (sequential evaluation reads each page once).
READ_BATCH_ROWS = 8
MAX_OPEN_FILES = 64


def _metadata_names(schema: Any) -> Optional[List[str]]:
    """The ClassLabel names Hugging Face ``datasets`` stores in the schema metadata."""
    meta = schema.metadata or {}
    raw = meta.get(b"huggingface")
    if not raw:
        return None
    try:
        feats = json.loads(raw).get("info", {}).get("features", {})
        names = feats.get("label", {}).get("names")
    except (ValueError, AttributeError):
        return None
    return [str(n) for n in names] if isinstance(names, list) and names else None


class ParquetSource(Source):
    """One split's parquet shards (``files``, sorted) under the dataset folder ``root``."""

    kind = "parquet"

    def __init__(self, root: str, files: Sequence[str],
                 classes: Optional[Sequence[str]] = None) -> None:
        import pyarrow.parquet as pq

        self.root = root
        self.files = list(files)
        rg_rows: List[int] = []
        rg_file: List[int] = []
        labels: List[np.ndarray] = []
        names: Optional[List[str]] = None
        for k, path in enumerate(self.files):
            try:
                pf = pq.ParquetFile(path)
                schema = pf.schema_arrow
                cols = schema.names
                if "image" not in cols or "label" not in cols:
                    raise DataError(f"{path}: not an image-classification parquet shard (columns "
                                    f"{', '.join(cols)}; expected image and label)")
                img_t = schema.field("image").type
                if not hasattr(img_t, "get_field_index") or img_t.get_field_index("bytes") < 0:
                    raise DataError(f"{path}: the image column is {img_t}, expected a struct "
                                    "with the encoded image bytes (bytes, path)")
                md = pf.metadata
                for g in range(md.num_row_groups):
                    rg_rows.append(md.row_group(g).num_rows)
                    rg_file.append(k)
                lab = pf.read(columns=["label"]).column("label").to_numpy(zero_copy_only=False)
            except DataError:
                raise
            except Exception as exc:  # noqa: BLE001 - pyarrow's errors name no file
                raise DataError(f"cannot read the parquet shard {path}: {exc}") from None
            if len(lab) and lab.min() < 0:
                raise DataError(f"{path}: {int((lab < 0).sum())} sample(s) have no label "
                                "(label -1: the unlabelled test split?)")
            labels.append(np.asarray(lab, np.int64))
            names = names or _metadata_names(schema)
        if not rg_rows or sum(rg_rows) == 0:
            raise DataError(f"{root}: the shards {os.path.basename(self.files[0])} ... hold no "
                            "samples")
        all_labels = np.concatenate(labels)
        own, note = shard_class_names(root, names, int(all_labels.max()) + 1)
        order = stored_order_note(own, all_labels)
        self.classes, self.labels, self.missing_classes = remap_labels(
            root, own, all_labels, classes)
        self.notes = ([note] if classes is None else []) + ([order] if order else [])
        self.rg_start = np.zeros(len(rg_rows) + 1, np.int64)
        np.cumsum(np.asarray(rg_rows, np.int64), out=self.rg_start[1:])
        self.rg_file = np.asarray(rg_file, np.int32)
        # The first global row of each file, for names (file, row in file).
        first_rg = np.searchsorted(self.rg_file, np.arange(len(self.files)), side="left")
        self.file_start = self.rg_start[first_rg]
        self._rg_in_file = (np.arange(len(rg_rows)) - first_rg[self.rg_file]).astype(np.int32)
        self._worker: Dict[str, Any] = {}

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        state["_worker"] = {}
        return state

    def _locate(self, i: int) -> Tuple[int, int]:
        g = int(np.searchsorted(self.rg_start, i, side="right")) - 1
        return g, i - int(self.rg_start[g])

    def _file(self, k: int) -> Any:
        w = self._worker
        if w.get("pid") != os.getpid():  # opened files are per process (forked workers)
            w.clear()
            w.update(pid=os.getpid(), files={}, cursor=None)
        pf = w["files"].get(k)
        if pf is None:
            if len(w["files"]) >= MAX_OPEN_FILES:
                w["files"].clear()
            import pyarrow.parquet as pq

            # pre_buffer off: pages are read as the batches need them, not the whole group.
            pf = w["files"][k] = pq.ParquetFile(self.files[k], pre_buffer=False,
                                                buffer_size=1 << 20)
        return pf

    def read(self, i: int) -> bytes:
        g, row = self._locate(i)
        pf = self._file(int(self.rg_file[g]))
        w = self._worker
        cur = w["cursor"]  # [group, batch iterator, first row of the batch, its images]
        if cur is None or cur[0] != g or row < cur[2]:
            cur = w["cursor"] = [g, pf.iter_batches(
                batch_size=READ_BATCH_ROWS, row_groups=[int(self._rg_in_file[g])],
                columns=["image"], use_threads=False), 0, None]
        while cur[3] is None or row >= cur[2] + len(cur[3]):
            if cur[3] is not None:
                cur[2] += len(cur[3])
            cur[3] = next(cur[1]).column(0).field("bytes")
        value = cur[3][row - cur[2]].as_py()
        if value is None:
            raise OSError("no image bytes in this row")
        return value

    def name(self, i: int) -> str:
        k = int(self.rg_file[self._locate(i)[0]])
        return f"{os.path.relpath(self.files[k], self.root)}:{i - int(self.file_start[k])}"
