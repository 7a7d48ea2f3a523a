"""The ImageNet-21K specs: 21K pre-training and the 21K->1K fine-tunes at 224 and 384.

The official release states only their input size, classes, starting checkpoint and head
mapping (mfdsl.runner.official); every other recipe value repeats the matching ImageNet-1K
script's and the dry run lists it as not stated. A 21841-class ImageFolder set opens as
any other.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from mfdsl.api import load_spec
from mfdsl.runner.api import plan_run
from mfdsl.runner.official import HEAD_REMAP, in21k_kind, official_recipe, official_unstated

SPECS = Path(__file__).resolve().parent.parent / "specs"
MODELS = [f"{f}_{s}" for f in ("caformer", "convformer") for s in ("s18", "s36", "m36", "b36")]
KINDS = ("_in21k", "_in21ft1k", "_384_in21ft1k")
# The recipe fields a 21K spec takes from its ImageNet-1K counterpart.
FIELDS = ("epochs", "cooldown_epochs", "batch_size", "lr_batch", "optimizer", "lr", "opt_eps",
          "sched", "warmup_epochs", "mixup", "cutmix", "drop_path", "head_dropout", "ema",
          "amp", "weight_decay", "label_smoothing", "randaugment", "random_erasing")


@pytest.mark.parametrize("name", [m + k for m in MODELS for k in KINDS])
def test_each_21k_spec_is_its_models_architecture_with_the_stated_context(name: str) -> None:
    spec = load_spec(SPECS / f"{name}.mf")
    base, kind, classes, size = in21k_kind(name)
    assert spec.name == name and spec.num_classes == classes
    assert tuple(spec.img_size) == (size, size)
    one_k = load_spec(SPECS / f"{base}.mf")
    assert spec.stages == one_k.stages and spec.head == one_k.head
    counterpart = load_spec(SPECS / (f"{base}.mf" if kind == "pretrain" else f"{base}_384.mf"))
    for f in FIELDS:
        assert getattr(spec.recipe, f) == getattr(counterpart.recipe, f), f
    want_init = None if kind == "pretrain" else f"{base}.sail_in22k"
    assert spec.recipe.finetune_from == want_init
    stated = official_recipe(name)
    assert stated["num_classes"] == classes and stated["img_size"] == [size, size]
    assert not set(stated) & set(official_unstated(name))
    assert ("head_from_21k" in stated) == (kind == "finetune")


def test_other_names_are_not_21k_specs() -> None:
    for name in ("caformer_s18", "caformer_s18_384", "poolformerv2_s12_in21k",
                 "caformer_x18_in21k", "tiny_in21ft1k"):
        assert in21k_kind(name) is None and official_unstated(name) == []


@pytest.mark.parametrize("kind", KINDS)
def test_the_dry_run_follows_what_is_stated_and_lists_the_rest(kind: str, hub) -> None:
    name = "caformer_s18" + kind
    plan = plan_run(SPECS / f"{name}.mf", dataset_size=13_000_000, world_size=8)
    assert plan.deviations == []
    assert [u["item"] for u in plan.unstated] == official_unstated(name)
    assert {u["item"]: u["this_run"] for u in plan.unstated}["epochs"] == plan.recipe.epochs
    text = plan.summary()
    assert "official recipe: followed in every stated (img_size, num_classes" in text
    assert "not stated by the official sources" in text
    record = plan.to_json()
    assert record["official_unstated"] == plan.unstated
    if kind != "_in21k":
        assert record["official"]["head_from_21k"] == HEAD_REMAP


def test_a_stated_item_changed_is_a_deviation(hub) -> None:
    plan = plan_run(SPECS / "caformer_s18_in21ft1k.mf", dataset_size=10_000, world_size=1,
                    img_size=256, recipe={"finetune_from": "caformer_s18.sail_in1k"})
    devs = {d["item"]: (d["official"], d["this_run"]) for d in plan.deviations}
    assert devs == {"img_size": ([224, 224], [256, 256]),
                    "init_from": ("caformer_s18.sail_in22k", "caformer_s18.sail_in1k"),
                    "head_from_21k": (HEAD_REMAP, None)}


@pytest.mark.slow
def test_an_imagefolder_21k_set_opens_for_a_21841_class_spec(tmp_path: Path) -> None:
    """fall11 as an ImageFolder: train/<wnid>/ for each of the 21841 classes; label i is
    the i-th wnid in sorted order (the order the official class map indexes)."""
    from mfdsl.runner.run_data import open_run_data

    one = tmp_path / "one.png"
    Image.new("RGB", (8, 8), (10, 20, 30)).save(one)
    wnids = [f"n{i:08d}" for i in range(21841)]
    for split in ("train", "val"):
        for w in (wnids if split == "train" else wnids[:3]):
            d = tmp_path / "in21k" / split / w
            d.mkdir(parents=True)
            os.link(one, d / f"{w}_1.png")
    data = open_run_data(str(tmp_path / "in21k"), "train", "val", num_classes=21841)
    assert data.plan.classes == 21841 and data.plan.train_images == 21841
    assert list(data.train.classes) == sorted(wnids)
    assert data.plan.val_images == 3
    # One folder too many for the head is refused, as for ImageNet-1K.
    from mfdsl.runner.errors import DataError

    with pytest.raises(DataError):
        open_run_data(str(tmp_path / "in21k"), "train", "val", num_classes=21840)
