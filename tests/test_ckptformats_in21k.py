"""An ImageNet-21K head loads into an ImageNet-1K model as the official script rewrites it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mfdsl.ckptformats.in21k import CLASS_MAP_FILE
from mfdsl.ckptformats.weights import CheckpointError, load_checkpoint

from specs_py import to_official_layout
from test_ckptformats_weights import tiny


def official_rewrite(t: torch.Tensor) -> torch.Tensor:
    """process_21k_ckpt_before_1k_finetuning.py read independently: zero rows, each mapped
    1K row copied from its 21K row one by one, class 850 the mean of all 21841 rows."""
    pairs = json.loads(Path(CLASS_MAP_FILE).read_text())
    out = torch.zeros((1000,) + tuple(t.shape[1:]), dtype=t.dtype)
    for i1k, i21k in zip(pairs["in1k_idx"], pairs["in21k_idx"]):
        out[i1k] = t[i21k]
    out[850] = t.mean(0)
    return out


def test_class_map_is_the_official_one() -> None:
    pairs = json.loads(Path(CLASS_MAP_FILE).read_text())
    assert len(pairs["in1k_idx"]) == len(pairs["in21k_idx"]) == 999
    assert set(range(1000)) - set(pairs["in1k_idx"]) == {850}
    assert max(pairs["in21k_idx"]) < 21841


@pytest.mark.parametrize("family,head", [
    pytest.param("caformer", "head.fc.fc2", marks=pytest.mark.slow),  # ~7 s: MLP head
    ("poolformerv2", "head.fc")])
def test_21k_head_is_remapped_tensor_for_tensor(tmp_path: Path, family: str, head: str
                                                ) -> None:
    src = tiny(family, seed=1, num_classes=21841)
    sd = to_official_layout(src.state_dict())
    path = tmp_path / "in21k.pth"
    torch.save(sd, path)
    model = tiny(family, seed=2, num_classes=1000)
    report = load_checkpoint(model, path)
    assert sorted(report.remapped) == [f"{head}.bias", f"{head}.weight"]
    assert any("21841" in n and "class map" in n for n in report.notes)
    got, ref = model.state_dict(), src.state_dict()
    for k, v in got.items():
        want = official_rewrite(ref[k]) if k in report.remapped else ref[k]
        assert torch.equal(v, want), k


def test_other_class_counts_are_not_remapped(tmp_path: Path) -> None:
    src = tiny("poolformerv2", num_classes=21841)
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_checkpoint(tiny("poolformerv2", num_classes=10), src.state_dict())
    same = tiny("poolformerv2", seed=3, num_classes=21841)
    assert load_checkpoint(same, src.state_dict()).remapped == []
