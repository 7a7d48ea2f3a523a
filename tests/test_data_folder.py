"""The data pipeline's edges: what a class folder scan reads (links, loops, hidden and odd
files, order, errors), an explicit class list, unreadable-image accounting (distinct files,
any file name, across workers), corrupt files of every kind, and per-sample augmentation
randomness (deterministic, never touching torch's global RNG, equal to timm's RRC +
RandAugment), and the device-side batch step (normalisation equal to the per-sample float
path, erasing that depends on the sample alone)."""
from __future__ import annotations

import json
import os
import random
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mfdsl.run_options import CROP_SCALE_MIN
from mfdsl import ir
from mfdsl.data.transforms import (BatchPreprocess, HorizontalFlip, PendingErasing,
                                     RandomErasing, SeededPipeline, ToNormalizedTensor,
                                     ToUint8Tensor, _patch_posterize, eval_transform,
                                     train_transform)
from mfdsl.errors import DataError
from mfdsl.data.dataset import (ResumableDistributedSampler, ShardSampler,
                                      SkippingImageFolder, UnknownClassError,
                                      UnreadableImages, collate, make_loader,
                                      scan_image_folder)

from devices import DEVICES

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _img(path: Path, colour=(120, 30, 200), size=(12, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _classes(root: Path, n: int = 4, names=("a", "b")) -> Path:
    for c in names:
        for i in range(n):
            _img(root / c / f"{i:02d}.png", (i * 30, 10, 10))
    return root


def _rel(ds, root: Path):
    return [(os.path.relpath(p, root), t) for p, t in ds.samples]


# ----------------------------------------------------------------------------- scanning
def test_symlink_loops_do_not_multiply_or_mislabel(tmp_path: Path) -> None:
    root = _classes(tmp_path / "d", n=40)
    (root / "a" / "loop_up").symlink_to(root)          # up to the data folder
    (root / "a" / "loop_self").symlink_to(root / "a")  # back to the class folder
    (root / "b" / "sub").mkdir()
    _img(root / "b" / "sub" / "x.png")
    (root / "b" / "sub" / "back").symlink_to(root / "b")
    scan = scan_image_folder(str(root))
    assert len(scan.samples) == 81
    assert [t for _, t in scan.samples] == [0] * 40 + [1] * 41
    assert all(os.path.basename(os.path.dirname(p)) in ("a", "b", "sub") for p, _ in scan.samples)
    assert any("loop" in n for n in scan.notes)


def test_links_into_another_class_are_errors_not_mislabels(tmp_path: Path) -> None:
    root = _classes(tmp_path / "d")
    (root / "a" / "more").symlink_to(root / "b")
    with pytest.raises(DataError, match=r"labelled both 'b' and 'a'"):
        scan_image_folder(str(root))
    (root / "a" / "more").unlink()
    (root / "a" / "one.png").symlink_to(root / "b" / "00.png")
    with pytest.raises(DataError, match="labelled both"):
        scan_image_folder(str(root))
    (root / "a" / "one.png").unlink()
    ext = tmp_path / "pool"
    _img(ext / "p.png")
    (root / "a" / "pool").symlink_to(ext)
    (root / "b" / "pool").symlink_to(ext)
    with pytest.raises(DataError, match="labelled both"):
        scan_image_folder(str(root))
    (root / "b" / "pool").unlink()
    (root / "c").symlink_to(root / "a")  # two class folders that are one folder
    with pytest.raises(DataError, match="same folder"):
        scan_image_folder(str(root))


def test_links_outside_are_followed_once(tmp_path: Path) -> None:
    root = _classes(tmp_path / "d", n=2)
    _img(tmp_path / "pool" / "p.png")
    _img(tmp_path / "pool" / "q.png")
    _img(tmp_path / "other" / "r.png")
    _img(tmp_path / "third" / "s.png")
    (root / "a" / "pool1").symlink_to(tmp_path / "pool")
    (root / "a" / "pool2").symlink_to(tmp_path / "pool")         # the same folder again
    (root / "b" / "z.png").symlink_to(tmp_path / "other" / "r.png")  # a file link
    (root / "b" / "zz.png").symlink_to(root / "b" / "00.png")    # a second name, same class
    (root / "c").symlink_to(tmp_path / "third")                  # a linked class folder
    scan = scan_image_folder(str(root))
    assert scan.classes == ["a", "b", "c"]
    assert _rel_scan(scan, root) == [
        ("a/00.png", 0), ("a/01.png", 0), ("a/pool1/p.png", 0), ("a/pool1/q.png", 0),
        ("b/00.png", 1), ("b/01.png", 1), ("b/z.png", 1), ("c/s.png", 2)]
    assert any("reached twice" in n for n in scan.notes)
    # A file link into a folder another class reads is ambiguous.
    (root / "b" / "q.png").symlink_to(tmp_path / "pool" / "q.png")
    with pytest.raises(DataError, match="labelled both 'a' and 'b'"):
        scan_image_folder(str(root))


def _rel_scan(scan, root: Path):
    return [(os.path.relpath(p, root), t) for p, t in scan.samples]


def test_hidden_odd_and_special_files_are_left_out_and_order_is_sorted(tmp_path: Path) -> None:
    root = tmp_path / "d"
    # Created out of order: the scan's order must not depend on the filesystem's.
    for name in ("b/z.png", "b/a.png", "a/sub2/y.png", "a/sub1/x.png", "a/m.png"):
        _img(root / name)
    (root / "a" / "._m.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (root / "a" / ".DS_Store").write_bytes(b"junk")
    _img(root / "a" / ".hidden" / "h.png")
    (root / ".git").mkdir()
    (root / "a" / "labels.txt").write_text("x")
    os.mkfifo(root / "a" / "pipe.jpg")  # would block a reader forever
    (root / "a" / "broken.png").symlink_to(tmp_path / "nowhere.png")
    (root / "README.md").write_text("a file beside the class folders")
    scan = scan_image_folder(str(root))
    assert scan.classes == ["a", "b"]
    # The FIFO and the broken link are named like images: kept, to be reported unreadable.
    assert _rel_scan(scan, root) == [("a/broken.png", 0), ("a/m.png", 0), ("a/pipe.jpg", 0),
                                     ("a/sub1/x.png", 0), ("a/sub2/y.png", 0),
                                     ("b/a.png", 1), ("b/z.png", 1)]
    text = " ".join(scan.notes)
    assert "hidden" in text and "image extension" in text
    ds = SkippingImageFolder(str(root))
    _, _, failures = ds[0]
    assert [j for j, _ in failures] == [0]
    _, _, failures = ds[2]  # the FIFO: refused without opening it (no hang)
    assert [j for j, _ in failures] == [2] and "not a regular file" in failures[0][1]


def test_empty_and_unreadable_folders_are_located_errors(tmp_path: Path, monkeypatch) -> None:
    root = _classes(tmp_path / "d")
    (root / "c").mkdir()
    (root / "c" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"class folder .*/c holds no image files"):
        SkippingImageFolder(str(root))
    (root / "c" / "notes.txt").unlink()
    (root / "c").rmdir()
    real_scandir = os.scandir

    def scandir(path):
        if str(path).endswith(os.sep + "b"):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataError, match=r"cannot read the folder .*/b: Permission denied"):
        SkippingImageFolder(str(root))


def test_odd_names_in_errors_stay_on_one_line(tmp_path: Path) -> None:
    root = _classes(tmp_path / "d")
    (root / "new\nline").mkdir()
    with pytest.raises(DataError) as info:
        SkippingImageFolder(str(root))
    assert "\n" not in str(info.value) and "new\\nline" in str(info.value)


# ----------------------------------------------------------------------------- class list
def test_explicit_class_list(tmp_path: Path) -> None:
    root = _classes(tmp_path / "d", n=2, names=("b", "c"))
    ds = SkippingImageFolder(str(root), classes=["c", "a", "b"])
    assert ds.classes == ["c", "a", "b"]
    assert sorted({t for _, t in ds.samples}) == [0, 2]
    assert all(t == (0 if "/c/" in p else 2) for p, t in ds.samples)
    assert ds.missing_classes == ["a"]
    assert ds[0][1] == 2  # b's first image, label 2 in the given list
    with pytest.raises(UnknownClassError,
                       match=r"class folder\(s\) 'c' are not in the class list") as info:
        SkippingImageFolder(str(root), classes=["a", "b"])
    assert info.value.folders == ["c"]
    with pytest.raises(DataError, match="more than once"):
        SkippingImageFolder(str(root), classes=["b", "c", "b"])
    with pytest.raises(DataError, match="non-empty names"):
        SkippingImageFolder(str(root), classes=[])
    assert SkippingImageFolder(str(root)).classes == ["b", "c"]


# ----------------------------------------------------------------------------- unreadable
def _png_bomb(path: Path) -> None:
    """A valid-looking 60000 x 60000 PNG of a few bytes (PIL: DecompressionBombError)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_corrupt_files_of_every_kind_are_skipped_and_counted_in_workers(tmp_path: Path) -> None:
    root = _classes(tmp_path / "d", n=6)
    good = (root / "a" / "00.png")
    jpg = root / "a" / "01.jpg"
    Image.new("RGB", (64, 48), (10, 200, 10)).save(jpg, quality=90)
    data = jpg.read_bytes()
    (root / "a" / "01_trunc.jpg").write_bytes(data[: len(data) // 2])
    (root / "a" / "02_zero.png").write_bytes(b"")
    _png_bomb(root / "b" / "00_bomb.png")
    (root / "b" / "01_text.jpg").write_text("not an image")
    (root / "b" / "01_trunc.png").write_bytes(good.read_bytes()[:40])
    ds = SkippingImageFolder(str(root), train_transform(ir.RecipeSpec(), (16, 16), MEAN, STD,
                                                        crop_scale_min=CROP_SCALE_MIN))
    sampler = ResumableDistributedSampler(ds, 1, 0, seed=0)
    log = UnreadableImages("train")
    n = 0
    for images, targets, failures in make_loader(ds, sampler, 4, 2, 0, drop_last=False,
                                                 pin_memory=False):
        log.add_batch(ds, failures)
        n += len(targets)
    assert n == len(ds) == 18
    errors = {os.path.basename(p): e for p, (_, e) in log.files.items()}
    assert sorted(errors) == ["00_bomb.png", "01_text.jpg", "01_trunc.jpg", "01_trunc.png",
                              "02_zero.png"]
    assert errors["00_bomb.png"].startswith("DecompressionBombError")


def test_unreadable_files_are_counted_once_per_file_with_their_fetches(tmp_path: Path) -> None:
    root = _classes(tmp_path / "d", n=5, names=("a",))
    for name in ("01.png", "02.png", "03.png"):  # three adjacent bad files
        (root / "a" / name).write_bytes(b"bad")
    (root / "a" / "03.png").rename(root / "a" / "03\nnew line.png")
    import torchvision.transforms as T

    ds = SkippingImageFolder(str(root), T.ToTensor())
    log = UnreadableImages("train")
    sampler = ResumableDistributedSampler(ds, 1, 0, seed=1)
    for epoch in range(2):
        sampler.set_position(epoch)
        for _, _, failures in make_loader(ds, sampler, 2, 2, epoch, drop_last=False,
                                          pin_memory=False):
            log.add_batch(ds, failures)
    assert len(log) == 3
    # A walk from a bad file meets every bad file after it: 1 + 2 + 3 fetches per epoch.
    assert sorted(a for a, _ in log.files.values()) == [2, 4, 6]
    lines = log.jsonl().splitlines()
    assert len(lines) == 3
    recs = [json.loads(line) for line in lines]
    assert {os.path.basename(r["path"]) for r in recs} == {"01.png", "02.png", "03\nnew line.png"}
    assert all(r["split"] == "train" and r["error"] for r in recs)
    assert "03\\nnew line.png" in log.describe(limit=3) and "\n" not in log.describe(limit=3)
    # Merging the per-rank states (what DDP and resuming do) adds fetches, not files.
    other = UnreadableImages("train", log.state())
    other.merge(log.state())
    assert len(other) == 3 and other.attempts() == 24


# ----------------------------------------------------------------------------- randomness
def _photo(seed: int = 0, size=(60, 45)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _finished(out, mean=MEAN, std=STD, channels_last: bool = False) -> torch.Tensor:
    """One sample of a pipeline's worker output through the device-side batch step."""
    return BatchPreprocess(mean, std, "cpu", channels_last)(collate([(out, 0, ())])[0])[0]


def test_pipeline_is_per_sample_deterministic_and_leaves_global_rngs_alone() -> None:
    tf = train_transform(ir.RecipeSpec(random_erasing=1.0), (32, 32), MEAN, STD,
                         crop_scale_min=CROP_SCALE_MIN)
    img = _photo()
    torch_state, py_state = torch.get_rng_state(), random.getstate()
    np_state = np.random.get_state()
    a = tf(img, 12345)
    assert isinstance(a, PendingErasing) and a.images.dtype == torch.uint8
    assert a.images.shape == (3, 32, 32) and a.regions[2] > 0
    b = tf(img, 12345)
    c = tf(img, 54321)
    assert torch.equal(a.images, b.images) and torch.equal(a.regions, b.regions)
    assert torch.equal(_finished(a), _finished(b))
    assert not torch.equal(_finished(a), _finished(c))
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == py_state
    assert all(np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y
               for x, y in zip(np.random.get_state(), np_state))


def test_every_recipe_variant_leaves_torch_global_rng_alone() -> None:
    img = _photo(1)
    for ra in (None, "rand-m9-mstd0.5-inc1", "rand-m15-n3-mstd1", "augmix-m5-w3", "v0"):
        for re in (0.0, 1.0):
            for interp in ("random", "bicubic", "bilinear"):
                tf = train_transform(ir.RecipeSpec(randaugment=ra, random_erasing=re,
                                                   train_interpolation=interp), (24, 24),
                                     MEAN, STD, hflip=0.5, crop_scale_min=CROP_SCALE_MIN)
                state = torch.get_rng_state()
                for s in range(5):
                    tf(img, s)
                assert torch.equal(torch.get_rng_state(), state), (ra, re, interp)


def test_a_transform_drawing_from_torch_global_rng_is_refused() -> None:
    import torchvision.transforms as T

    with pytest.raises(TypeError, match="RandomHorizontalFlip"):
        SeededPipeline([T.RandomHorizontalFlip()])
    with pytest.raises(TypeError, match="ColorJitter"):
        SeededPipeline([T.ColorJitter(0.4, 0.4, 0.4)])


def test_crop_and_randaugment_are_timms() -> None:
    """Without flip and erasing (ours), the pipeline is timm's create_transform, draw for
    draw, given the same python/numpy seeds (equal to float rounding)."""
    from timm.data import create_transform

    recipe = ir.RecipeSpec(random_erasing=0.0)
    ours = train_transform(recipe, (40, 40), MEAN, STD, hflip=0.0, crop_scale_min=0.25)
    timms = create_transform(input_size=(3, 40, 40), is_training=True, hflip=0.0,
                             scale=(0.25, 1.0), auto_augment=recipe.randaugment,
                             interpolation="random", mean=MEAN, std=STD, re_prob=0.0)
    for t in timms.transforms:
        _patch_posterize(t)
    img = _photo(2, (80, 50))
    for seed in range(20):
        random.seed(seed)
        np.random.seed(seed)
        want = timms(img)
        # Normalising in one pass rounds differently from ToTensor + Normalize.
        # tolerance: elementwise (no reduction): one fp32 rounding of a value in [-3, 3]
        torch.testing.assert_close(_finished(ours(img, seed)), want, rtol=0, atol=2e-6)


def test_flip_and_erasing() -> None:
    g = torch.Generator().manual_seed(0)
    img = _photo(3, (8, 4))
    assert np.array_equal(np.asarray(HorizontalFlip(1.0)(img, g)), np.asarray(img)[:, ::-1])
    assert HorizontalFlip(0.0)(img, g) is img
    flips = sum(HorizontalFlip(0.5)(img, g) is not img for _ in range(2000))
    assert 900 < flips < 1100
    # The worker draws the rectangles; the batch step fills them with N(0, 1) noise in the
    # normalised image.
    grey = torch.full((3, 32, 48), 128, dtype=torch.uint8)
    samples = [RandomErasing(1.0)(grey, g) for _ in range(300)]
    x = BatchPreprocess((0.5,) * 3, (0.5,) * 3)(collate([(s, 0, ()) for s in samples])[0])
    plain = _finished(grey, (0.5,) * 3, (0.5,) * 3)  # nothing erased
    torch.testing.assert_close(plain, torch.full((3, 32, 48), 128 / 127.5 - 1))
    erased = x != plain
    fractions = erased[:, 0].float().mean((1, 2))
    assert 0.015 < fractions.min() and fractions.max() < 0.36  # 2-33%, sides rounded
    for (top, left, h, w, _), e in zip((s.regions.tolist() for s in samples), erased[:, 0]):
        assert e[top:top + h, left:left + w].all() and e.sum() == h * w
    z = x[erased]
    assert abs(z.mean().item()) < 0.05 and abs(z.std().item() - 1) < 0.05
    kept = RandomErasing(0.0)(grey, g)
    assert torch.equal(kept.regions, torch.zeros(5, dtype=torch.int64))
    assert torch.equal(_finished(kept, (0.5,) * 3, (0.5,) * 3), plain)


def test_batches_do_not_depend_on_the_number_of_workers(tmp_path: Path) -> None:
    root = tmp_path / "d"
    for c in ("a", "b"):
        for i in range(6):
            (root / c).mkdir(parents=True, exist_ok=True)
            _photo(i + (10 if c == "b" else 0), (40, 30)).save(root / c / f"{i}.jpg", quality=90)
    ds = SkippingImageFolder(str(root), train_transform(ir.RecipeSpec(), (24, 24), MEAN, STD,
                                                        crop_scale_min=CROP_SCALE_MIN))

    def batches(workers: int):
        s = ResumableDistributedSampler(ds, 1, 0, seed=5)
        s.set_position(1, 2)
        return [(x, y) for x, y, _ in make_loader(ds, s, 4, workers, 6, drop_last=True,
                                                  pin_memory=False)]

    py_state, np_state = random.getstate(), np.random.get_state()[1].copy()
    zero = batches(0)  # in this process: the caller's RNG states are kept
    assert random.getstate() == py_state and np.array_equal(np.random.get_state()[1], np_state)
    two = batches(2)
    assert len(zero) == 2
    prep = BatchPreprocess.for_transform(ds.transform, "cpu")
    for (x0, y0), (x2, y2) in zip(zero, two):
        assert x0.images.dtype == torch.uint8 and x0.images.shape == (4, 3, 24, 24)
        assert torch.equal(x0.images, x2.images) and torch.equal(x0.regions, x2.regions)
        assert torch.equal(y0, y2) and torch.equal(prep(x0), prep(x2))
    # Eval keys (plain indices) are deterministic too.
    plain = make_loader(ds, ShardSampler(len(ds)), 4, 0, 0, drop_last=False, pin_memory=False)
    assert sum(len(y) for _, y, _ in plain) == 12


@pytest.mark.parametrize("crop_mode", ["center", "squash", "border"])
def test_timm_eval_transforms_are_accepted_and_draw_nothing(crop_mode: str) -> None:
    from timm.data import create_transform

    tf = create_transform(input_size=(3, 32, 32), is_training=False, crop_mode=crop_mode,
                          crop_pct=0.9)
    pipe = SeededPipeline(tf.transforms)
    assert not pipe.random
    state = random.getstate()
    out = pipe(_photo(4))
    assert out.shape == (3, 32, 32) and random.getstate() == state


def test_train_labels_val_with_the_training_classes(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from mfdsl.cli import main

    demo = str(Path(__file__).resolve().parents[1] / "specs" / "demo_tiny.mf")
    for split, names in (("train", "abc"), ("val", "ac")):
        for k, c in enumerate(names):
            for i in range(4):
                _img(tmp_path / "d" / split / c / f"{i}.png", (80 * k, 40 * i, 0), (20, 20))
    fast = ["--max-steps", "1", "--epochs", "1", "--warmup-epochs", "0", "--workers", "0",
            "--no-tensorboard", "--batch-size", "4", "--data", str(tmp_path / "d")]
    res = CliRunner().invoke(main, ["train", demo, *fast, "-o", str(tmp_path / "r1")])
    assert res.exit_code == 0, res.output
    assert "has no folder for 1 of the 3 training classes ('b')" in res.output
    _img(tmp_path / "d" / "val" / "z" / "0.png")
    res = CliRunner().invoke(main, ["train", demo, *fast, "-o", str(tmp_path / "r2")])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "'z' are not in the class list" in res.output and "training split" in res.output


# ----------------------------------------------------------------------------- device-side step
@pytest.mark.parametrize("device", DEVICES)
def test_device_normalisation_equals_the_per_sample_float_path(device: str) -> None:
    """uint8 batch -> BatchPreprocess gives ToNormalizedTensor's floats (both memory
    formats, on every device), and keeps a float batch as it is."""
    imgs = [_photo(s, (20, 14)) for s in range(5)]
    want = torch.stack([ToNormalizedTensor(MEAN, STD)(im) for im in imgs])
    for sent_cl in (False, True):  # the workers' layout
        batch = collate([(ToUint8Tensor(sent_cl)(im), 0, ()) for im in imgs])[0]
        assert batch.dtype == torch.uint8 and batch.shape == (5, 3, 14, 20)
        sent = torch.channels_last if sent_cl else torch.contiguous_format
        assert batch.is_contiguous(memory_format=sent)
        for channels_last in (False, True):  # the model's
            got = BatchPreprocess(MEAN, STD, device, channels_last)(batch)
            assert got.dtype == torch.float32 and got.device.type == device
            # tolerance: elementwise normalisation, one fp32 rounding of values in [-3, 3]
            torch.testing.assert_close(got.cpu(), want, rtol=0, atol=1e-6)
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            assert got.is_contiguous(memory_format=fmt)
    assert torch.equal(BatchPreprocess(None, None)(want.clone()), want)
    with pytest.raises(TypeError, match="no mean/std"):
        BatchPreprocess(None, None)(batch)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        BatchPreprocess(MEAN, STD)(batch[:, :1])
    gray = ToUint8Tensor()(_photo(9, (6, 4)).convert("L"))
    assert gray.shape == (1, 4, 6) and gray.dtype == torch.uint8


@pytest.mark.parametrize("device", DEVICES)
def test_erasing_depends_on_the_sample_alone(tmp_path: Path, device: str) -> None:
    """The erased noise of a sample is a function of (run seed, epoch, index): the same in
    any batch size, order and worker count, with or without channels-last (on each device;
    CPU and CUDA generators draw different noise into the same regions)."""
    root = tmp_path / "d"
    for c in ("a", "b"):
        for i in range(6):
            (root / c).mkdir(parents=True, exist_ok=True)
            _photo(i + (10 if c == "b" else 0), (40, 30)).save(root / c / f"{i}.jpg", quality=90)
    recipe = ir.RecipeSpec(random_erasing=1.0, randaugment=None)

    def per_sample(batch: int, workers: int, epoch: int, channels_last: bool = False):
        ds = SkippingImageFolder(str(root), train_transform(recipe, (24, 24), MEAN, STD,
                                                            channels_last=channels_last,
                                                            crop_scale_min=CROP_SCALE_MIN))
        s = ResumableDistributedSampler(ds, 1, 0, seed=3)
        s.set_position(epoch)
        order = [i for i, _, _ in s]
        prep = BatchPreprocess.for_transform(ds.transform, device, channels_last)
        out = [x.cpu() for b, _, _ in make_loader(ds, s, batch, workers, 0, drop_last=False,
                                                  pin_memory=device != "cpu") for x in prep(b)]
        return dict(zip(order, out))

    ref = per_sample(4, 0, 0)
    assert len(ref) == 12
    for other in (per_sample(3, 2, 0), per_sample(1, 0, 0), per_sample(4, 0, 0, True)):
        assert all(torch.equal(ref[i], other[i]) for i in ref)
    next_epoch = per_sample(4, 0, 1)
    assert not any(torch.equal(ref[i], next_epoch[i]) for i in ref)
    for x in ref.values():  # standard normal noise in the erased regions, images elsewhere
        assert x.isfinite().all() and -6 < float(x.min()) and float(x.max()) < 6


def test_eval_pipeline_equals_timms_float_transform(tmp_path: Path) -> None:
    """eval_transform's uint8 + device normalisation equals timm's eval transform (to
    tensor + Normalize in the worker) to float rounding, and evaluate() gives the same
    metrics with either."""
    from timm.data import create_transform, resolve_data_config

    from mfdsl.runner.distributed import DistEnv
    from mfdsl.runner.evaluate import evaluate

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 2))
    model.pretrained_cfg = dict(input_size=(3, 24, 24), crop_pct=0.9, interpolation="bicubic",
                                mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    ours = eval_transform(model)
    assert ours.normalize == ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3)) and not ours.random
    old = SeededPipeline(create_transform(**resolve_data_config({}, model=model),
                                          is_training=False).transforms)
    for s in range(4):
        img = _photo(s, (37, 29))
        # tolerance: elementwise (no reduction): one fp32 rounding of a value in [-3, 3]
        torch.testing.assert_close(_finished(ours(img), *ours.normalize), old(img),
                                   rtol=0, atol=2e-6)
    root = _classes(tmp_path / "d", n=5)
    (root / "a" / "02.png").write_bytes(b"not an image")  # a replaced, left-out sample
    env = DistEnv()
    res = [evaluate(model, make_loader(SkippingImageFolder(str(root), tf), ShardSampler(10), 4,
                                       0, 0, drop_last=False, pin_memory=False), env)
           for tf in (ours, old)]
    assert res[0]["images"] == res[1]["images"] == 9 and res[0]["skipped_images"] == 1
    assert res[0]["top1"] == res[1]["top1"]
    # tolerance: the same model on the same images; only the mean's summation order differs
    assert res[0]["loss"] == pytest.approx(res[1]["loss"], rel=1e-5)
