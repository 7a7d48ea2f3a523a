"""Data sources: the ImageFolder tree, Hugging Face parquet shards and WebDataset tar shards
behind one interface; layout detection; the same images in any form give the same labels,
class list and batches (any number of workers); the shard index cache; flat indexes."""
from __future__ import annotations

import io
import os
import pickle
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler

from mfdsl.data.dataset import (ResumableDistributedSampler, ShardSampler, SourceDataset,
                                UnreadableImages, make_loader, spread_subset)
from mfdsl.data.layout import LayoutError, detect_layout, open_source
from mfdsl.data.sources import UnknownClassError
from mfdsl.data.tarshards import TarShardSource
from mfdsl.data.transforms import SeededPipeline, ToUint8Tensor
from mfdsl.data.writers import folder_to_forms, write_parquet_split, write_tar_split
from mfdsl.errors import DataError

WNIDS = ["n01440764", "n01443537", "n01484850"]


def _tree(root: Path, n_train: int = 7, n_val: int = 3, seed: int = 0) -> Path:
    rng = random.Random(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for c, wnid in enumerate(WNIDS):
            d = root / split / wnid
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = Image.new("RGB", (20 + rng.randrange(12), 18 + rng.randrange(12)),
                                tuple(rng.randrange(256) for _ in range(3)))
                img.putpixel((1, 1), (c * 100, 0, 0))
                img.save(d / f"{wnid}_{i:04d}.JPEG", format="JPEG", quality=90)
    (root / "train" / WNIDS[1] / f"{WNIDS[1]}_9999.JPEG").write_bytes(b"not an image")
    return root


@pytest.fixture(scope="module")
def forms(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("forms")
    folder = _tree(tmp / "folder")
    folder_to_forms(str(folder), str(tmp / "parquet"), str(tmp / "tar"),
                    parquet_per_shard=8, tar_per_shard=5)
    return {"folder": str(folder), "parquet": str(tmp / "parquet"), "tar": str(tmp / "tar")}


def _uint8_pipeline():
    from timm.data.transforms import RandomResizedCropAndInterpolation

    from mfdsl.data.transforms import HorizontalFlip

    return SeededPipeline([RandomResizedCropAndInterpolation(16, interpolation="random"),
                           HorizontalFlip(0.5), ToUint8Tensor()], normalize=((0.5,) * 3,
                                                                              (0.5,) * 3))


def test_layouts_are_recognised(forms):
    kinds = {k: detect_layout(v) for k, v in forms.items()}
    assert {k: lay.kind for k, lay in kinds.items()} == {"folder": "folder", "parquet": "parquet",
                                                         "tar": "tar"}
    assert sorted(kinds["parquet"].splits) == ["train", "validation"]
    assert sorted(kinds["tar"].splits) == ["train", "validation"]
    assert kinds["tar"].find("val") == "validation"
    assert len(kinds["tar"].splits["train"]) == 5  # 22 samples in shards of 5


def test_a_mixed_or_unknown_layout_is_a_clear_error(forms, tmp_path):
    mixed = tmp_path / "mixed"
    (mixed / "train" / "a").mkdir(parents=True)
    (mixed / "x-train-0000.tar").write_bytes(b"")
    with pytest.raises(LayoutError, match="mixes dataset forms") as e:
        detect_layout(str(mixed))
    assert "ImageFolder" in e.value.message and "tar shards" in e.value.message
    other = tmp_path / "other"
    other.mkdir()
    (other / "README.md").write_text("x")
    with pytest.raises(LayoutError, match="README.md") as e:
        detect_layout(str(other))
    assert "data/train-\\*.parquet" in str(e.value.message).replace("*", "\\*")


def test_same_classes_labels_and_order_in_every_form(forms):
    srcs = {k: open_source(detect_layout(v), "train") for k, v in forms.items()}
    ref = srcs["folder"]
    assert ref.classes == WNIDS
    for kind, src in srcs.items():
        assert src.classes == WNIDS, kind
        assert np.array_equal(src.labels, ref.labels), kind
        assert [src.read(i) for i in range(len(src))] == [ref.read(i) for i in range(len(ref))]
        shuffled = random.Random(kind).sample(range(len(src)), len(src))
        assert [src.read(i) for i in shuffled] == [ref.read(i) for i in shuffled], kind
    # val with the training class list
    vals = {k: open_source(detect_layout(v), "val", WNIDS) for k, v in forms.items()}
    assert len({tuple(v.labels) for v in vals.values()}) == 1
    assert all(v.missing_classes == [] for v in vals.values())


@pytest.mark.parametrize("kind", ["parquet", "tar"])
def test_same_batches_as_the_folder_with_any_workers(forms, kind):
    """Folder form with no workers vs a shard form with 2 workers: equal batches, equal
    failure accounting positions (the unreadable image is in all three forms)."""
    def batches(root, workers):
        ds = SourceDataset(open_source(detect_layout(root), "train"), _uint8_pipeline())
        sampler = ResumableDistributedSampler(ds, 1, 0, seed=3)
        sampler.set_position(1, 4)
        loader = make_loader(ds, sampler, 4, workers, 3, drop_last=True, pin_memory=False)
        return ds, list(loader)

    fds, ref = batches(forms["folder"], 0)
    sds, got = batches(forms[kind], 2)
    assert len(ref) == len(got) > 0
    for (xa, ya, fa), (xb, yb, fb) in zip(ref, got):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert [[j for j, _ in f] for f in fa] == [[j for j, _ in f] for f in fb]
    log = UnreadableImages("train")
    for _, _, f in got:
        log.add_batch(sds, f)
    assert all(":" in p for p in log.paths())  # shard:key / file:row names
    # Errors name the sample, not the in-memory buffer's address (stable across runs).
    errors = [e for _, _, f in got for item in f for _, e in item]
    assert errors and all("BytesIO" not in e and "0x" not in e for e in errors)


def test_ddp_shards_are_the_same_samples_in_every_form(forms):
    lens = set()
    for kind, root in forms.items():
        src = open_source(detect_layout(root), "train")
        lens.add(len(src))
        ds = SourceDataset(src)
        seen = []
        for rank in range(3):
            s = ResumableDistributedSampler(ds, 3, rank, seed=0)
            s.set_epoch(2)
            seen.append([i for i, _, _ in s])
        assert sorted(set(sum(seen, []))) == list(range(len(src))), kind
    assert len(lens) == 1


def test_sampler_order_is_torchs_and_holds_no_python_list():
    class N:
        def __len__(self):
            return 23

    for world, rank, skip in ((1, 0, 0), (3, 2, 0), (4, 1, 2)):
        ours = ResumableDistributedSampler(N(), world, rank, seed=5)
        ours.set_position(7, skip)
        theirs = DistributedSampler(N(), num_replicas=world, rank=rank, seed=5)
        theirs.set_epoch(7)
        assert [i for i, s, e in ours] == list(theirs)[skip:]
        assert isinstance(ours.indices(), np.ndarray) and len(ours) == len(list(theirs)) - skip
    sub = spread_subset(10, 4)
    assert list(sub) == [0, 2, 5, 7]
    assert list(ShardSampler(10, 1, 2, subset=sub)) == [2, 7]
    assert isinstance(ShardSampler(10**7).indices, range)


def test_folder_index_is_flat_arrays(forms):
    src = open_source(detect_layout(forms["folder"]), "train")
    idx = src.index
    assert isinstance(idx.names, np.ndarray) and idx.names.dtype == np.uint8
    assert idx.labels.dtype == np.int64 and len(idx.offsets) == len(src) + 1
    # Pickled for a spawned worker: a few arrays, not one object per sample.
    assert len(pickle.dumps(src)) < idx.nbytes + 4000


def test_class_list_of_a_run_is_applied_and_checked(forms):
    lay = detect_layout(forms["tar"])
    run_classes = ["n00000001"] + WNIDS  # a run trained with one more class
    src = open_source(lay, "val", run_classes)
    assert src.classes == run_classes and src.missing_classes == ["n00000001"]
    assert set(src.labels.tolist()) == {1, 2, 3}
    with pytest.raises(UnknownClassError, match="n01484850"):
        open_source(lay, "val", WNIDS[:2])
    with pytest.raises(UnknownClassError):
        open_source(detect_layout(forms["parquet"]), "val", WNIDS[1:])


def test_tar_index_is_cached_validated_and_rebuilt(forms, tmp_path, monkeypatch):
    monkeypatch.setenv("MFDSL_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "t"
    items = [(Path(forms["folder"], "train", WNIDS[0], f"{WNIDS[0]}_{i:04d}.JPEG").read_bytes(),
              i % 2, "x") for i in range(6)]
    write_tar_split(items, str(root), "train", per_shard=4)
    files = sorted(str(p) for p in root.glob("*.tar"))
    a = TarShardSource(str(root), "train", files)
    assert "built and saved" in a.notes[0] and (root / ".mfdsl-index-train.npz").is_file()
    b = TarShardSource(str(root), "train", files)
    assert "read from" in b.notes[0] and np.array_equal(a.offset, b.offset)
    # A changed shard (size/mtime) invalidates the index.
    write_tar_split(items[:5], str(root), "train", per_shard=4)
    c = TarShardSource(str(root), "train", files)
    assert "built" in c.notes[0] and len(c) == 5
    # A shard folder the index cannot be written to: mfdsl's cache folder.
    (root / ".mfdsl-index-train.npz").unlink()
    (root / ".mfdsl-index-train.npz").mkdir()  # blocks the file (as a read-only folder would)
    d = TarShardSource(str(root), "train", files)
    assert str(tmp_path / "cache") in d.notes[0] and len(d) == 5
    assert "read from" in TarShardSource(str(root), "train", files).notes[0]
    assert d.read(4) == items[4][0] and d.label(4) == 0


def test_tar_without_names_and_1000_labels_takes_imagenet_wnids(tmp_path):
    img = io.BytesIO()
    Image.new("RGB", (8, 8)).save(img, format="PNG")
    write_tar_split([(img.getvalue(), 999, "x"), (img.getvalue(), 0, "y")], str(tmp_path),
                    "validation")
    src = open_source(detect_layout(str(tmp_path)), "val")
    assert len(src.classes) == 1000 and src.classes[0] == "n01440764"
    assert src.classes == sorted(src.classes)


def test_broken_shards_are_located_errors(tmp_path):
    root = tmp_path / "b"
    root.mkdir()
    with tarfile.open(root / "x-train-0000.tar", "w") as tf:
        info = tarfile.TarInfo("k1.jpg")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(DataError, match="k1.cls"):
        open_source(detect_layout(str(root)), "train")
    (root / "x-train-0000.tar").write_bytes(b"garbage" * 100)
    with pytest.raises(DataError, match="x-train-0000.tar"):
        open_source(detect_layout(str(root)), "train")
    pq = tmp_path / "p" / "data"
    pq.mkdir(parents=True)
    (pq / "train-00000-of-00001.parquet").write_bytes(b"nope")
    with pytest.raises(DataError, match="train-00000-of-00001.parquet"):
        open_source(detect_layout(str(tmp_path / "p")), "train")


def test_folder_symlinks_index_by_link_without_realpath_per_file(tmp_path, monkeypatch):
    real = _tree(tmp_path / "real", 3, 1)
    links = tmp_path / "links" / "train"
    for c in WNIDS:
        (links / c).mkdir(parents=True)
        for f in sorted((real / "train" / c).iterdir()):
            os.symlink(os.path.relpath(f, links / c), links / c / f.name)
    calls = []
    orig = os.path.realpath
    monkeypatch.setattr(os.path, "realpath", lambda p, **k: (calls.append(p), orig(p, **k))[1])
    src = open_source(detect_layout(str(tmp_path / "links")), "train")
    n = len(src)
    assert n == 3 * 3 + 1 and len(calls) < 10  # a few folders, not one per file
    assert src.read(0) == (real / "train" / WNIDS[0] / f"{WNIDS[0]}_0000.JPEG").read_bytes()


def test_folder_manifest_is_reused_while_valid_and_rescanned_after_a_change(tmp_path,
                                                                             monkeypatch):
    import mfdsl.data.folder as folder

    monkeypatch.setenv("MFDSL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(folder, "SETTLED_S", 0.0)  # the utime below is a change (ctime)
    root = _tree(tmp_path / "d", 3, 1)
    old = 1_600_000_000
    for d, _, _ in os.walk(root):
        os.utime(d, (old, old))
    a = open_source(detect_layout(str(root)), "train")
    assert list((tmp_path / "cache" / "folder-index").glob("*.npz"))
    real_scan = folder.scan_image_folder
    monkeypatch.setattr(folder, "scan_image_folder", lambda *a, **k: pytest.fail("rescanned"))
    b = open_source(detect_layout(str(root)), "train")  # a second rank / a later run
    assert b.classes == a.classes and np.array_equal(b.index.names, a.index.names)
    assert np.array_equal(b.labels, a.labels) and b.notes == a.notes
    # Another class list is another manifest.
    monkeypatch.setattr(folder, "scan_image_folder", real_scan)
    c = open_source(detect_layout(str(root)), "train", ["n00000000"] + WNIDS)
    assert c.missing_classes == ["n00000000"] and c.labels.min() == 1
    # A file added: its folder's mtime moved, so the tree is scanned again.
    (root / "train" / WNIDS[2] / "new.JPEG").write_bytes(b"x")
    d = open_source(detect_layout(str(root)), "train")
    assert len(d) == len(a) + 1


def _split_items(forms, n=6):
    return [(Path(forms["folder"], "train", WNIDS[0], f"{WNIDS[0]}_{i:04d}.JPEG").read_bytes(),
             0, f"{i}.JPEG") for i in range(n)]


def test_a_shard_split_with_missing_shards_is_refused(forms, tmp_path):
    """An interrupted download must not train on part of the data: -of-N names must all be
    there, a numbered series must have no gap, and mixed counts or series are refused."""
    items = _split_items(forms)
    pq_root = tmp_path / "pq"
    write_parquet_split(items, str(pq_root), "train", WNIDS, per_shard=2)  # -of-00003
    write_parquet_split(items, str(pq_root), "validation", WNIDS, per_shard=6)
    (pq_root / "data" / "train-00001-of-00003.parquet").unlink()
    lay = detect_layout(str(pq_root))
    with pytest.raises(DataError, match=r"train split .* 2 of 3 shards present") as e:
        open_source(lay, "train")
    assert "train-00001-of-00003.parquet" in e.value.message
    assert len(open_source(lay, "val")) == 6  # the complete split is still usable
    # The last shard missing is seen too: the names say how many there are.
    (pq_root / "data" / "train-00002-of-00003.parquet").unlink()
    with pytest.raises(DataError, match="1 of 3 shards present"):
        open_source(detect_layout(str(pq_root)), "train")
    # Shards of two downloads (different counts) are not one split.
    write_parquet_split(items, str(pq_root), "train", WNIDS, per_shard=3)  # -of-00002
    with pytest.raises(DataError, match="different counts"):
        open_source(detect_layout(str(pq_root)), "train")

    tar_root = tmp_path / "tar"
    write_tar_split(items, str(tar_root), "train", per_shard=2)  # 0000 0001 0002
    os.replace(tar_root / "imagenet1k-train-0002.tar", tar_root / "imagenet1k-train-0003.tar")
    with pytest.raises(DataError, match=r"3 of 4 shards present \(numbered 0000 to 0003\)"
                       ) as e:
        open_source(detect_layout(str(tar_root)), "train")
    assert "missing imagenet1k-train-0002.tar" in e.value.message
    os.replace(tar_root / "imagenet1k-train-0003.tar", tar_root / "other-train-0002.tar")
    with pytest.raises(DataError, match="mixes shard series"):
        open_source(detect_layout(str(tar_root)), "train")
    os.replace(tar_root / "other-train-0002.tar", tar_root / "imagenet1k-train-0002.tar")
    assert len(open_source(detect_layout(str(tar_root)), "train")) == 6


def test_folder_manifest_sees_a_removal_behind_a_restored_mtime(tmp_path, monkeypatch):
    """rsync -t (or any utime) puts a folder's mtime back after a file was removed: the
    cached index must not be used (the change time moved), and no lock file is left."""
    import mfdsl.data.folder as folder

    monkeypatch.setenv("MFDSL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(folder, "SETTLED_S", 0.0)
    root = _tree(tmp_path / "d", 3, 1)
    a = open_source(detect_layout(str(root)), "train")
    cls = root / "train" / WNIDS[0]
    st = os.stat(cls)
    (cls / f"{WNIDS[0]}_0001.JPEG").unlink()
    os.utime(cls, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(cls).st_mtime_ns == st.st_mtime_ns
    b = open_source(detect_layout(str(root)), "train")
    assert len(b) == len(a) - 1
    assert not any(n.endswith("_0001.JPEG") and WNIDS[0] in n
                   for n, _ in b.index.pairs())
    cache = tmp_path / "cache"
    assert list(cache.rglob("*.npz")) and not list(cache.rglob("*.lock"))


def test_build_lock_excludes_and_leaves_no_lock_file(tmp_path):
    """The lock file is removed on release; a waiter that then holds the removed file takes
    the lock again, so two holders never overlap."""
    import threading
    import time

    from mfdsl.data.manifest import build_lock

    path = str(tmp_path / "x.npz")
    inside, overlaps = [0], []

    def work():
        for _ in range(20):
            with build_lock(path):
                inside[0] += 1
                overlaps.append(inside[0] > 1)
                time.sleep(0.0005)
                inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(overlaps) == 80 and not any(overlaps)
    assert os.listdir(tmp_path) == []


def test_shards_out_of_the_folders_order_are_noted(forms, tmp_path):
    """The same images train the same run in any form only in the folder's reading order
    (class by class): shards stored otherwise say so when opened."""
    srcs = {k: open_source(detect_layout(forms[k]), "train") for k in ("parquet", "tar")}
    assert not any("class by class" in n for s in srcs.values() for n in s.notes)
    items = [(Path(forms["folder"], "train", w, f"{w}_{i:04d}.JPEG").read_bytes(), c, "x")
             for i in range(3) for c, w in enumerate(WNIDS)]  # classes interleaved
    write_parquet_split(items, str(tmp_path / "pq"), "train", WNIDS, per_shard=4)
    write_tar_split(items, str(tmp_path / "tar"), "train", per_shard=4, classes=WNIDS)
    for kind in ("pq", "tar"):
        for classes in (None, WNIDS):
            src = open_source(detect_layout(str(tmp_path / kind)), "train", classes)
            note = [n for n in src.notes if "class by class" in n]
            assert note and f"sample 3 is class {WNIDS[0]!r}, after {WNIDS[2]!r}" in note[0], kind
