"""Write an ImageFolder split as parquet shards (the Hugging Face imagenet-1k layout) or
WebDataset tar shards (timm's imagenet-1k-wds naming), keeping the folder's sample order.

Used by the tests and ``benchmarks/bench_data_scale.py`` to hold the same images in all
three forms; the shards read back through :mod:`mfdsl.data.layout` give the same index
order, labels and class list as the folder.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from typing import Iterator, List, Optional, Sequence, Tuple

from .sources import read_file

# Hugging Face ``datasets`` writes image datasets in row groups of 100 rows.
HF_ROWS_PER_GROUP = 100

# (encoded bytes, label, original file name) per sample.
Item = Tuple[bytes, int, str]


def folder_items(folder: str, classes: Optional[Sequence[str]] = None
                 ) -> Tuple[List[str], Iterator[Item]]:
    """The class list and the samples of an ImageFolder split, in its reading order (a file
    that cannot be read becomes empty bytes: an unreadable sample in the shards too)."""
    from .folder import FolderSource

    src = FolderSource(folder, classes)

    def items() -> Iterator[Item]:
        for i in range(len(src)):
            try:
                data = read_file(src.name(i))
            except OSError:
                data = b""
            yield data, src.label(i), os.path.basename(src.name(i))

    return src.classes, items()


def _chunks(items: Sequence[Item], per_shard: int) -> List[Sequence[Item]]:
    return [items[i:i + per_shard] for i in range(0, len(items), per_shard)] or [items]


def write_parquet_split(items: Sequence[Item], root: str, split: str, classes: Sequence[str],
                        per_shard: int = 5000, rows_per_group: int = HF_ROWS_PER_GROUP
                        ) -> List[str]:
    """``root/data/{split}-NNNNN-of-MMMMM.parquet`` with columns image {bytes, path} and
    label, and the ClassLabel names in the schema metadata as ``datasets`` writes them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(os.path.join(root, "data"), exist_ok=True)
    meta = {"info": {"features": {
        "image": {"_type": "Image"},
        "label": {"names": list(classes), "_type": "ClassLabel"}}}}
    schema = pa.schema([
        ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        ("label", pa.int64())], metadata={b"huggingface": json.dumps(meta).encode()})
    chunks = _chunks(items, per_shard)
    out = []
    for k, chunk in enumerate(chunks):
        path = os.path.join(root, "data", f"{split}-{k:05d}-of-{len(chunks):05d}.parquet")
        table = pa.table({
            "image": pa.array([{"bytes": b, "path": p} for b, _, p in chunk],
                              schema.field("image").type),
            "label": pa.array([lab for _, lab, _ in chunk], pa.int64())}, schema=schema)
        pq.write_table(table, path + ".tmp", row_group_size=rows_per_group, compression="none")
        os.replace(path + ".tmp", path)
        out.append(path)
    return out


def write_tar_split(items: Sequence[Item], root: str, split: str, prefix: str = "imagenet1k",
                    per_shard: int = 1250, classes: Optional[Sequence[str]] = None
                    ) -> List[str]:
    """``root/{prefix}-{split}-NNNN.tar`` with ``KEY.jpg`` (the encoded bytes, whatever
    their format) and ``KEY.cls`` per sample; ``classes``: also write ``classes.txt``."""
    os.makedirs(root, exist_ok=True)
    chunks = _chunks(items, per_shard)
    out = []
    n = 0
    for k, chunk in enumerate(chunks):
        path = os.path.join(root, f"{prefix}-{split}-{k:04d}.tar")
        with tarfile.open(path + ".tmp", "w", format=tarfile.USTAR_FORMAT) as tf:
            for data, label, _ in chunk:
                key = f"{split}_{n:08d}"
                n += 1
                for ext, payload in (("jpg", data), ("cls", str(label).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    info.mtime = 0
                    tf.addfile(info, io.BytesIO(payload))
        os.replace(path + ".tmp", path)
        out.append(path)
    if classes is not None:
        with open(os.path.join(root, "classes.txt"), "w", encoding="utf-8") as f:
            f.write("".join(f"{c}\n" for c in classes))
    return out


def folder_to_forms(folder_root: str, parquet_root: Optional[str], tar_root: Optional[str],
                    splits: Sequence[Tuple[str, str]] = (("train", "train"),
                                                         ("val", "validation")),
                    parquet_per_shard: int = 5000, tar_per_shard: int = 1250,
                    tar_classes_txt: bool = True) -> None:
    """Write each ``(folder split, shard split)`` of an ImageFolder tree as parquet and/or
    tar shards (the class list is the training split's)."""
    classes: Optional[List[str]] = None
    for fsplit, ssplit in splits:
        folder = os.path.join(folder_root, fsplit)
        if not os.path.isdir(folder):
            continue
        cls, it = folder_items(folder, classes)
        classes = cls
        items = list(it)
        if parquet_root:
            write_parquet_split(items, parquet_root, ssplit, cls, parquet_per_shard)
        if tar_root:
            write_tar_split(items, tar_root, ssplit, per_shard=tar_per_shard,
                            classes=classes if tar_classes_txt else None)
