"""load_checkpoint: file reading, refusal of pickled code, format conversion, reporting."""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Dict

import pytest
import torch
from safetensors.torch import save_file

from mfdsl.api import build_model
from mfdsl.ckptformats.weights import (CheckpointError, LoadReport, detect_format,
                                       load_checkpoint, read_state_dict)
from mfdsl.ir import call

import specs_py
from specs_py import to_official_layout

TINY_DIMS = [32, 32, 64, 64]
TINY_DEPTHS = [1, 1, 2, 1]
MIXERS = {
    "randformer": [call("identity"), call("identity"), call("random"), call("random")],
    "caformer": [call("sepconv"), call("sepconv"), call("attention"), call("attention")],
    "poolformerv2": [call("pooling")] * 4,
}


def tiny(family: str, seed: int = 0, img: int = 96, num_classes: int = 10) -> torch.nn.Module:
    norm = specs_py.CHANNEL_LN if family == "caformer" else specs_py.MODIFIED_LN
    head = specs_py.MLP_HEAD_OFFICIAL if family == "caformer" else call("linear")
    spec = specs_py.metaformer_spec(f"tiny_{family}", TINY_DEPTHS, TINY_DIMS, MIXERS[family],
                                    norm, head, num_classes=num_classes, img_size=img)
    torch.manual_seed(seed)
    model = build_model(spec).eval()
    with torch.no_grad():  # off the init, so that every tensor is distinguishable
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def plain_sd(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


# --- native round trips -----------------------------------------------------------------

@pytest.mark.parametrize("family", list(MIXERS))
@pytest.mark.parametrize("ext", [".pth", ".pt", ".bin", ".safetensors"])
def test_native_round_trip(tmp_path: Path, family: str, ext: str) -> None:
    src, dst = tiny(family, seed=1), tiny(family, seed=2)
    assert not same_weights(src, dst)
    path = tmp_path / f"w{ext}"
    if ext == ".safetensors":
        save_file(src.state_dict(), str(path))  # fails on shared / non-contiguous tensors
    else:
        torch.save(src.state_dict(), path)
    report = load_checkpoint(dst, path)
    assert isinstance(report, LoadReport)
    assert report.format == "mfdsl" and report.ok
    assert report.source == str(path)
    assert set(report.loaded) == set(dst.state_dict())
    assert same_weights(src, dst)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))


def test_legacy_torch_format_loads(tmp_path: Path) -> None:
    src, dst = tiny("poolformerv2", seed=1), tiny("poolformerv2", seed=2)
    path = tmp_path / "legacy.pth"
    torch.save(plain_sd(src), path, _use_new_zipfile_serialization=False)
    assert path.read_bytes()[:1] == b"\x80"
    load_checkpoint(dst, path)
    assert same_weights(src, dst)


def test_randformer_frozen_matrix_round_trips(tmp_path: Path) -> None:
    src, dst = tiny("randformer", seed=1), tiny("randformer", seed=2)
    keys = [k for k in src.state_dict() if k.endswith("token_mixer.random_matrix")]
    assert keys == ["stages.2.blocks.0.token_mixer.random_matrix",
                    "stages.2.blocks.1.token_mixer.random_matrix",
                    "stages.3.blocks.0.token_mixer.random_matrix"]
    path = tmp_path / "rand.safetensors"
    save_file(src.state_dict(), str(path))
    load_checkpoint(dst, path)
    for k in keys:
        assert torch.equal(src.state_dict()[k], dst.state_dict()[k])
    frozen = [n for n, p in dst.named_parameters() if not p.requires_grad]
    assert sorted(frozen) == sorted(keys)  # loading keeps the matrices frozen


def test_safetensors_content_is_recognised_whatever_the_extension(tmp_path: Path) -> None:
    src, dst = tiny("poolformerv2", seed=1), tiny("poolformerv2", seed=2)
    path = tmp_path / "weights.pth"
    save_file(src.state_dict(), str(path))
    load_checkpoint(dst, path)
    assert same_weights(src, dst)


# --- containers and prefixes ------------------------------------------------------------

@pytest.mark.parametrize("wrap,container", [
    (lambda sd: {"state_dict": sd, "epoch": 3}, "state_dict"),
    (lambda sd: {"model": sd, "optimizer": {"lr": torch.tensor(0.1)}}, "model"),
    (lambda sd: {"model_ema": sd}, "model_ema"),
    (lambda sd: {"state_dict": {"module." + k: v for k, v in sd.items()}}, "state_dict"),
    (lambda sd: {"module." + k: v for k, v in sd.items()}, None),
    (lambda sd: {"module._orig_mod." + k: v for k, v in sd.items()}, None),
])
def test_containers_and_wrapper_prefixes(tmp_path: Path, wrap, container) -> None:
    src, dst = tiny("caformer", seed=1), tiny("caformer", seed=2)
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(plain_sd(src)), path)
    report = load_checkpoint(dst, path)
    assert report.ok and report.container == container
    assert same_weights(src, dst)


def test_training_checkpoint_with_namespace_args_loads(tmp_path: Path) -> None:
    # timm's train.py saves its argparse.Namespace next to the weights: plain data.
    src, dst = tiny("poolformerv2", seed=1), tiny("poolformerv2", seed=2)
    path = tmp_path / "checkpoint-10.pth.tar"
    torch.save({"epoch": 10, "arch": "x", "state_dict": plain_sd(src),
                "args": argparse.Namespace(lr=1e-3, model="x")}, path)
    load_checkpoint(dst, path)
    assert same_weights(src, dst)


def test_in_memory_state_dict() -> None:
    src, dst = tiny("randformer", seed=1), tiny("randformer", seed=2)
    report = load_checkpoint(dst, src.state_dict())
    assert report.source == "<state dict>" and report.ok
    assert same_weights(src, dst)


# --- refusing code and rejecting bad files ----------------------------------------------

class Payload:
    """Stands for any pickled object whose loading would run code."""

    def __init__(self) -> None:
        self.x = 1


def test_pickled_code_is_refused_by_name(tmp_path: Path) -> None:
    dst = tiny("poolformerv2")
    before = plain_sd(dst)
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": plain_sd(dst), "extra": Payload()}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(dst, path)
    text = str(err.value)
    assert "refused" in text and "pickled" in text
    assert "Payload" in text and str(path) in text
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())


def test_whole_pickled_module_is_refused(tmp_path: Path) -> None:
    src = tiny("poolformerv2")
    path = tmp_path / "model.pt"
    torch.save(src, path)
    with pytest.raises(CheckpointError, match=r"refused.*references [\w.]+"):
        load_checkpoint(tiny("poolformerv2"), path)


def _good_file(tmp_path: Path, ext: str) -> Path:
    sd = tiny("poolformerv2").state_dict()
    path = tmp_path / f"good{ext}"
    if ext == ".safetensors":
        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    return path


@pytest.mark.parametrize("ext", [".pth", ".safetensors"])
def test_truncated_file_is_a_checkpoint_error(tmp_path: Path, ext: str) -> None:
    data = _good_file(tmp_path, ext).read_bytes()
    bad = tmp_path / f"cut{ext}"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        load_checkpoint(tiny("poolformerv2"), bad)
    assert str(bad) in str(err.value)


@pytest.mark.parametrize("ext", [".pth", ".safetensors", ".bin"])
def test_garbage_file_is_a_checkpoint_error(tmp_path: Path, ext: str) -> None:
    bad = tmp_path / f"garbage{ext}"
    bad.write_bytes(b"this is not a checkpoint at all\n" * 50)
    with pytest.raises(CheckpointError, match="not a valid"):
        load_checkpoint(tiny("poolformerv2"), bad)


def test_empty_missing_and_directory_paths(tmp_path: Path) -> None:
    model = tiny("poolformerv2")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(model, empty)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(model, tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(model, tmp_path)


@pytest.mark.parametrize("obj,msg", [
    ([1, 2, 3], "holds a list"),
    ({"epoch": 3, "best": 0.5}, "not a state dict"),
    ({}, "no tensors"),
])
def test_files_without_weights(tmp_path: Path, obj, msg: str) -> None:
    path = tmp_path / "x.pth"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match=msg):
        load_checkpoint(tiny("poolformerv2"), path)


# --- reporting missing / unexpected / mis-shaped keys -----------------------------------

def _damaged(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    sd = dict(sd)
    del sd["stages.1.blocks.0.mlp.fc1.weight"]
    sd["stages.1.blocks.0.extra.weight"] = torch.zeros(3)
    sd["head.fc.weight"] = torch.zeros(1000, 64)
    return sd


def test_strict_names_every_bad_key_and_leaves_the_model() -> None:
    src, dst = tiny("poolformerv2", seed=1), tiny("poolformerv2", seed=2)
    before = plain_sd(dst)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(dst, _damaged(plain_sd(src)))
    text = str(err.value)
    assert "missing from the checkpoint (1):\n    stages.1.blocks.0.mlp.fc1.weight" in text
    assert "not in the model (1):\n    stages.1.blocks.0.extra.weight" in text
    assert "head.fc.weight: model expects [10, 64], checkpoint has [1000, 64]" in text
    assert "strict=False" in text and "fine-tuning" in text
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())


def test_non_strict_loads_what_fits_and_reports_the_rest() -> None:
    src, dst = tiny("poolformerv2", seed=1), tiny("poolformerv2", seed=2)
    before = plain_sd(dst)
    report = load_checkpoint(dst, _damaged(plain_sd(src)), strict=False)
    assert not report.ok
    assert report.missing == ["stages.1.blocks.0.mlp.fc1.weight"]
    assert report.unexpected == ["stages.1.blocks.0.extra.weight"]
    assert report.mismatched == [("head.fc.weight", (10, 64), (1000, 64))]
    now, want = dst.state_dict(), src.state_dict()
    for k in now:
        expected = before[k] if k in ("stages.1.blocks.0.mlp.fc1.weight",
                                      "head.fc.weight") else want[k]
        assert torch.equal(now[k], expected), k
    assert "stages.1.blocks.0.extra.weight" in report.summary()


def test_random_matrix_size_mismatch_says_why() -> None:
    src, dst = tiny("randformer", img=64), tiny("randformer", img=96)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(dst, src.state_dict())
    text = str(err.value)
    assert ("stages.3.blocks.0.token_mixer.random_matrix: model expects [9, 9], "
            "checkpoint has [4, 4]") in text
    assert "input size" in text


def test_unknown_layout_is_reported() -> None:
    with pytest.raises(CheckpointError, match="no key looks like a MetaFormer") as err:
        load_checkpoint(tiny("poolformerv2"), {"encoder.layer.0.weight": torch.zeros(2)})
    assert "encoder.layer.0.weight" in str(err.value)


def test_poolformer_v1_into_another_model_is_named() -> None:
    with pytest.raises(CheckpointError, match="format: poolformer_v1"):
        load_checkpoint(tiny("poolformerv2"), {"network.0.0.mlp.fc1.weight": torch.zeros(2)})


# --- other layouts ------------------------------------------------------------------------

def to_timm_layout(sd: Dict[str, torch.Tensor], attention_stages=()) -> Dict[str, torch.Tensor]:
    """timm's names; pointwise layers as 1x1 convs outside attention stages."""
    out = {}
    for k, v in sd.items():
        k = k.replace("stem.post_norm.", "stem.norm.")
        k = re.sub(r"^(stages\.\d+\.downsample)\.pre_norm\.", r"\1.norm.", k)
        stage = re.match(r"^stages\.(\d+)\.", k)
        if (stage and int(stage.group(1)) not in attention_stages
                and re.search(r"\.(mlp\.fc[12]|pwconv[12])\.weight$", k)):
            v = v[:, :, None, None]
        out[k] = v.clone()
    return out


def test_timm_layout_with_1x1_convs_converts() -> None:
    src, dst = tiny("caformer", seed=1), tiny("caformer", seed=2)
    sd = to_timm_layout(src.state_dict(), attention_stages=(2, 3))
    assert sd["stages.0.blocks.0.mlp.fc1.weight"].shape == (128, 32, 1, 1)
    assert sd["stages.0.blocks.0.token_mixer.pwconv1.weight"].shape == (64, 32, 1, 1)
    assert sd["stages.2.blocks.0.mlp.fc1.weight"].shape == (256, 64)
    report = load_checkpoint(dst, sd)
    assert report.format == "timm" and report.ok
    assert report.renamed["stem.post_norm.weight"] == "stem.norm.weight"
    assert same_weights(src, dst)
    # timm's MlpHead norm eps differs from this (official) spec's: said, not silent.
    assert any("eps 1e-06" in n for n in report.notes)


def test_timm_layout_recognised_by_1x1_convs_alone() -> None:
    sd = {"stages.0.blocks.0.mlp.fc1.weight": torch.zeros(8, 4, 1, 1)}
    assert detect_format(sd) == "timm"
    assert detect_format({"stages.0.blocks.0.mlp.fc1.weight": torch.zeros(8, 4)}) == "mfdsl"


@pytest.mark.parametrize("family", ["randformer", "caformer"])
def test_official_layout_converts(tmp_path: Path, family: str) -> None:
    src, dst = tiny(family, seed=1), tiny(family, seed=2)
    sd = to_official_layout(src.state_dict())
    assert "stages.2.1.token_mixer.random_matrix" in sd or family != "randformer"
    assert ("head.fc1.weight" in sd) == (family == "caformer")
    path = tmp_path / "official.pth"
    torch.save(sd, path)
    report = load_checkpoint(dst, path)
    assert report.format == "official" and report.ok and not report.notes
    assert same_weights(src, dst)


def test_neither_path_nor_state_dict() -> None:
    with pytest.raises(CheckpointError, match="got int"):
        load_checkpoint(tiny("poolformerv2"), 3)


def test_read_state_dict_unwraps_without_a_model(tmp_path: Path) -> None:
    path = tmp_path / "c.pth"
    torch.save({"model": {"module.a.weight": torch.ones(2)}}, path)
    sd, where, container = read_state_dict(path)
    assert list(sd) == ["a.weight"] and where == str(path) and container == "model"


def test_garbage_that_looks_like_a_safetensors_header_is_not_a_valid_checkpoint(tmp_path):
    # Random bytes whose byte 8 is '{' are sniffed as safetensors (1 in 256 garbage files):
    # the message must still say what every other unreadable file gets.
    p = tmp_path / "g.pt"
    p.write_bytes(b"\x10" + bytes(7) + b"{garbage" + bytes(range(100)))
    with pytest.raises(CheckpointError, match="not a valid checkpoint"):
        spec = Path(__file__).resolve().parent.parent / "specs" / "demo_tiny.mf"
        load_checkpoint(build_model(str(spec)), str(p))
