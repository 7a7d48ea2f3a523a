"""WebDataset tar shards (``KEY.jpg`` + ``KEY.cls``) with random access through an index.

The index (per sample: shard number, byte offset and size of the image member, label, key)
is built once by reading the tar headers with Python's ``tarfile`` and cached as one
``.npz`` beside the shards (``.mfdsl-index-<split>.npz``), or in mfdsl's cache folder if
the shard folder cannot be written. It records each shard's name, size and modification
time and is rebuilt when any of them differ. A worker then reads a sample with one
``pread`` on a shard it keeps open: no per-sample object, no decompression, no seek state.

Why not webdataset's indexed reader (``wids``): it wants a JSON shard list with sample
counts written beforehand, builds its member index each time a process opens a shard (not
cached on disk), hands out samples as dicts of all members, and keeps per-process shard
readers whose memory grows with the shards touched; an index over ``tarfile``'s header
walk is ~150 lines, cached once per dataset, and holds 4 numbers per sample.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import DataError
from .index import NameIndexBuilder
from .sources import Source, remap_labels, shard_class_names, stored_order_note

INDEX_VERSION = 1
MAX_OPEN_SHARDS = 64  # per process; well under the usual 1024 open files
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp")


def _shard_stats(files: Sequence[str]) -> List[List[Any]]:
    out = []
    for f in files:
        st = os.stat(f)
        out.append([os.path.basename(f), int(st.st_size), int(st.st_mtime_ns)])
    return out


def _index_one(path: str, k: int) -> Tuple[List[str], List[int], List[int], List[int], List[str]]:
    """(keys, offsets, sizes, labels, notes) of one shard, in member order."""
    images: Dict[str, Tuple[int, int]] = {}
    order: List[str] = []
    labels: Dict[str, int] = {}
    notes: List[str] = []
    name = os.path.basename(path)
    try:
        with tarfile.open(path, "r:") as tf:
            while True:
                m = tf.next()
                if m is None:
                    break
                tf.members = []  # tarfile keeps every member otherwise
                if not m.isfile():
                    continue
                d, b = os.path.split(m.name)
                if "." not in b:
                    continue
                stem, ext = b.split(".", 1)
                key = f"{d}/{stem}" if d else stem
                ext = ext.lower()
                if ext in IMAGE_EXTS:
                    if key in images:
                        notes.append(f"{name}: {key} has more than one image; kept the first")
                        continue
                    images[key] = (m.offset_data, m.size)
                    order.append(key)
                elif ext == "cls":
                    f = tf.extractfile(m)
                    raw = f.read().strip() if f is not None else b""
                    try:
                        labels[key] = int(raw)
                    except ValueError:
                        raise DataError(f"{path}: {m.name} holds {raw[:20]!r}, not a class "
                                        "index") from None
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"cannot read the tar shard {path}: {exc}") from None
    missing = [key for key in order if key not in labels]
    if missing:
        raise DataError(f"{path}: sample {missing[0]!r} has an image but no {missing[0]}.cls "
                        f"({len(missing)} such); every sample needs KEY.cls (its class index)")
    bad = [key for key in order if labels[key] < 0]
    if bad:
        raise DataError(f"{path}: {bad[0]}.cls holds a negative class index")
    return (order, [images[x][0] for x in order], [images[x][1] for x in order],
            [labels[x] for x in order], notes)


def build_index(files: Sequence[str]) -> Dict[str, Any]:
    """The index arrays of ``files`` (see the module docstring)."""
    keys = NameIndexBuilder()
    shard, offset, size, notes = [], [], [], []
    for k, path in enumerate(files):
        ks, offs, sizes, labs, nts = _index_one(path, k)
        keys.add_chunk(ks, labs)
        shard.append(np.full(len(ks), k, np.int32))
        offset.append(np.asarray(offs, np.int64))
        size.append(np.asarray(sizes, np.int64))
        notes += nts
    idx = keys.build()
    return {"shard": np.concatenate(shard), "offset": np.concatenate(offset),
            "size": np.concatenate(size), "labels": idx.labels, "keys": idx.names,
            "key_offsets": idx.offsets, "notes": notes}


def _cache_paths(root: str, split: str) -> List[str]:
    from ..resources import default_cache_dir

    beside = os.path.join(root, f".mfdsl-index-{split}.npz")
    digest = hashlib.sha1(f"{os.path.realpath(root)}\0{split}".encode()).hexdigest()[:16]
    elsewhere = os.path.join(str(default_cache_dir()), "shard-index", f"{split}-{digest}.npz")
    return [beside, elsewhere]


def _load(path: str, stats: List[List[Any]]) -> Optional[Dict[str, Any]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            if meta.get("version") != INDEX_VERSION or meta.get("shards") != stats:
                return None
            out = {k: z[k] for k in ("shard", "offset", "size", "labels", "keys", "key_offsets")}
    except (OSError, ValueError, KeyError):
        return None
    out["notes"] = meta.get("notes", [])
    return out


def _save(path: str, index: Dict[str, Any], stats: List[List[Any]]) -> bool:
    meta = json.dumps({"version": INDEX_VERSION, "shards": stats, "notes": index["notes"]})
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, meta=np.frombuffer(meta.encode(), np.uint8),
                 **{k: v for k, v in index.items() if k != "notes"})
        with open(tmp, "wb") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: ranks building at once each install a whole file
        return True
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return False


def load_or_build_index(root: str, split: str, files: Sequence[str]
                        ) -> Tuple[Dict[str, Any], str]:
    """The cached index if one matches the shards (names, sizes, mtimes), else a new one,
    saved beside the shards or in the cache folder, under a lock (one build per machine).
    Also says which happened."""
    from .manifest import build_lock

    stats = _shard_stats(files)
    paths = _cache_paths(root, split)
    # The ranks of one machine: the first builds, the others wait and read its index.
    with build_lock(paths[1]):
        for path in paths:
            got = _load(path, stats)
            if got is not None:
                return got, f"shard index read from {path}"
        index = build_index(files)
        for path in paths:
            if _save(path, index, stats):
                return index, f"shard index built and saved to {path}"
    return index, "shard index built (could not be saved: no writable index folder)"


class TarShardSource(Source):
    """One split's tar shards (``files``, sorted) in the folder ``root``."""

    kind = "tar"

    def __init__(self, root: str, split: str, files: Sequence[str],
                 classes: Optional[Sequence[str]] = None) -> None:
        self.root = root
        self.files = list(files)
        index, how = load_or_build_index(root, split, self.files)
        if len(index["labels"]) == 0:
            raise DataError(f"{root}: the {split} shards hold no KEY.jpg + KEY.cls samples")
        self.shard, self.offset, self.size = index["shard"], index["offset"], index["size"]
        self.keys, self.key_offsets = index["keys"], index["key_offsets"]
        own, note = shard_class_names(root, None, int(index["labels"].max()) + 1)
        order = stored_order_note(own, index["labels"])
        self.classes, self.labels, self.missing_classes = remap_labels(
            root, own, index["labels"], classes)
        self.notes = ([how] + ([note] if classes is None else []) + ([order] if order else [])
                      + list(index["notes"])[:5])
        self._fds: Dict[str, Any] = {}

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        state["_fds"] = {}
        return state

    def _fd(self, k: int) -> int:
        fds = self._fds
        if fds.get("pid") != os.getpid():  # descriptors are per process (forked workers)
            fds.clear()
            fds["pid"] = os.getpid()
        fd = fds.get(k)
        if fd is None:
            if len(fds) > MAX_OPEN_SHARDS:  # a shuffled epoch touches every shard
                for key, old in list(fds.items()):
                    if key != "pid":
                        os.close(old)
                        del fds[key]
            fd = fds[k] = os.open(self.files[k], os.O_RDONLY)
        return fd

    def read(self, i: int) -> bytes:
        size = int(self.size[i])
        data = os.pread(self._fd(int(self.shard[i])), size, int(self.offset[i]))
        if len(data) != size:
            raise OSError(f"short read ({len(data)} of {size} bytes): the shard changed?")
        return data

    def name(self, i: int) -> str:
        a, b = int(self.key_offsets[i]), int(self.key_offsets[i + 1])
        return f"{os.path.basename(self.files[int(self.shard[i])])}:{os.fsdecode(self.keys[a:b].tobytes())}"
