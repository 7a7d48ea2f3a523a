"""Weight inheritance, tensor by tensor: what is copied, what stays new, and why."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict

import pytest
import torch
from safetensors.torch import save_file

from mfdsl.api import build_model
from mfdsl.weights import InheritError, inherit
from mfdsl.weights.inherit import plan_parts, split_mapping

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"

DEMO = (SPECS / "demo_tiny.mf").read_text()
HYBRID = (SPECS / "hybrid_tiny_attn.mf").read_text()


def _variant(text: str, name: str, **subs: str) -> str:
    text = re.sub(r"model \w+ \{", f"model {name} {{", text)
    for old, new in subs.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


def spec_file(tmp: Path, name: str, text: str) -> Path:
    p = tmp / f"{name}.mf"
    p.write_text(text)
    return p


def fake_run(tmp: Path, name: str, text: str, seed: int = 1) -> Path:
    """A run folder as `mfdsl train` leaves it: spec.mf and checkpoints/last.safetensors,
    with weights off the init so that every tensor is recognisable."""
    folder = tmp / name
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "spec.mf").write_text(text)
    torch.manual_seed(seed)
    model = build_model(folder / "spec.mf")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "checkpoints" / "last.safetensors"))
    return folder


def fresh(path: Path, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(path)


def source_state(run: Path) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "checkpoints" / "last.safetensors"))


@pytest.fixture
def demo_run(tmp_path: Path) -> Path:
    return fake_run(tmp_path, "demo", DEMO)


def _check_tensorwise(model, init, src, report, copied_from: Dict[str, str]) -> None:
    """Every tensor: equal to its source if copied, to the fresh init otherwise."""
    sd, sd0 = model.state_dict(), init.state_dict()
    assert set(report.copied()) == set(copied_from)
    for k in sd:
        if k in copied_from:
            assert torch.equal(sd[k], src[copied_from[k]]), k
            assert report.fate(k).source_key == copied_from[k]
        else:
            assert torch.equal(sd[k], sd0[k]), k


def test_early_stages_from_a_run(tmp_path: Path, demo_run: Path) -> None:
    hybrid = SPECS / "hybrid_tiny_attn.mf"
    model, init = fresh(hybrid), fresh(hybrid)
    report = inherit(model, [f"stage0-1={demo_run}"])
    src = source_state(demo_run)
    want = {k: k for k in src if k.startswith(("stem.", "stages.0.", "stages.1."))}
    assert len(want) == 28
    _check_tensorwise(model, init, src, report, want)
    assert report.fate("head.fc.weight").reason == "no source given"


def test_everything_that_fits_from_one_source(tmp_path: Path, demo_run: Path) -> None:
    hybrid = SPECS / "hybrid_tiny_attn.mf"
    model, init = fresh(hybrid), fresh(hybrid)
    report = inherit(model, [str(demo_run)])
    src = source_state(demo_run)
    # stage 2's downsampling has the same geometry; its sepconv block does not become an
    # attention block; the head (10 classes, linear) fits.
    want = {k: k for k in src
            if not k.startswith("stages.2.blocks.")}
    _check_tensorwise(model, init, src, report, want)
    fate = report.fate("stages.2.blocks.0.norm1.weight")
    assert fate.status == "mismatch"
    assert fate.reason == "mixer attention (source: sepconv(kernel=3))"
    parts = {p["part"]: p for p in report.as_json()["parts"]}
    assert parts["stage2"]["copied"] == 3 and parts["stage2"]["mismatch"] == 8
    assert "stages.2.blocks.0 (8 tensors) not copied: mixer attention" in report.table()


@pytest.mark.parametrize("depth", ["first", "repeat"])
def test_deeper_target_stage(tmp_path: Path, demo_run: Path, depth: str) -> None:
    deep = spec_file(tmp_path, "deep", _variant(
        DEMO, "deep", **{"sepconv(kernel=3) x1 @64": "sepconv(kernel=3) x3 @64"}))
    model, init = fresh(deep), fresh(deep)
    report = inherit(model, [str(demo_run)], depth=depth)
    src = source_state(demo_run)
    want = {}
    for k in model.state_dict():
        m = re.match(r"^stages\.1\.blocks\.(\d+)\.(.*)$", k)
        if m is None:
            want[k] = k
        elif m.group(1) == "0" or depth == "repeat":
            want[k] = f"stages.1.blocks.0.{m.group(2)}"
    _check_tensorwise(model, init, src, report, want)
    notes = " ".join(p for part in report.parts for p in part.notes)
    assert ("repeat the source's cyclically" in notes) == (depth == "repeat")


def test_shallower_target_takes_the_first_blocks(tmp_path: Path) -> None:
    two = fake_run(tmp_path, "two", _variant(
        DEMO, "two", **{"sepconv(kernel=3) x1 @64": "sepconv(kernel=3) x2 @64"}))
    demo = spec_file(tmp_path, "demo", DEMO)
    model, init = fresh(demo), fresh(demo)
    report = inherit(model, [str(two)])
    src = source_state(two)
    _check_tensorwise(model, init, src, report, {k: k for k in model.state_dict()})
    assert any("the first 1 are taken" in n for p in report.parts for n in p.notes)


def test_other_class_count_gets_a_new_classifier(tmp_path: Path, demo_run: Path) -> None:
    five = spec_file(tmp_path, "five", _variant(DEMO, "five", **{"classes 10": "classes 5"}))
    model, init = fresh(five), fresh(five)
    report = inherit(model, [str(demo_run)])
    src = source_state(demo_run)
    _check_tensorwise(model, init, src, report,
                      {k: k for k in model.state_dict() if not k.startswith("head.fc.")})
    assert report.fate("head.fc.weight").reason == "5 classes, the source has 10"


def test_extra_stage_is_new(tmp_path: Path, demo_run: Path) -> None:
    four = spec_file(tmp_path, "four", _variant(DEMO, "four", **{
        "  stage sepconv(kernel=3) x1 @96\n":
        "  stage sepconv(kernel=3) x1 @96\n  stage attention x2 @128\n"}))
    model, init = fresh(four), fresh(four)
    report = inherit(model, [str(demo_run)])
    src = source_state(demo_run)
    _check_tensorwise(model, init, src, report, {
        k: k for k in model.state_dict()
        if not k.startswith(("stages.3.", "head."))})
    fates = [t for t in report.parts[3].tensors]
    assert fates and all(t.status == "new" and t.reason == "the source has 3 stages"
                         for t in fates)
    assert report.fate("head.norm.weight").reason == "shape [128], source [96]"
    assert report.fate("head.fc.bias").reason == "head.fc.weight of the same module did not fit"


def test_width_and_norm_mismatches_say_why(tmp_path: Path, demo_run: Path) -> None:
    wide = spec_file(tmp_path, "wide", _variant(
        DEMO, "wide", **{"sepconv(kernel=3) x1 @96": "sepconv(kernel=3) x1 @128"}))
    model = fresh(wide)
    report = inherit(model, [str(demo_run)])
    f = report.fate("stages.2.blocks.0.mlp.fc1.weight")
    assert f.status == "mismatch" and f.reason == "shape [512, 128], source [384, 96]"
    # the same shapes under another norm are not the same role
    mln = spec_file(tmp_path, "mln", _variant(DEMO, "mln", **{
        "  stage sepconv(kernel=3) x1 @32":
        "  norm modified_layernorm(bias=false, eps=1e-6)\n  stage sepconv(kernel=3) x1 @32"}))
    report = inherit(fresh(mln), [str(demo_run)])
    assert report.fate("stages.0.blocks.0.norm1.weight").reason == \
        "norm modified_layernorm (source: layernorm)"
    assert report.fate("stem.conv.weight").status == "copied"


def test_two_sources_by_part_and_bare_checkpoint(tmp_path: Path, demo_run: Path) -> None:
    other = fake_run(tmp_path, "other", _variant(DEMO, "other"), seed=7)
    # a bare file (no spec beside it): official layout, matched by role and shape
    sd = source_state(other)
    official = {}
    for k, v in sd.items():
        k = re.sub(r"^stem\.", "downsample_layers.0.", k)
        k = re.sub(r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", k)
        k = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", k)
        k = re.sub(r"^head\.norm\.", "norm.", k).replace("head.fc.", "head.")
        official[k] = v
    bare = tmp_path / "bare.pth"
    torch.save(official, bare)
    demo = spec_file(tmp_path, "demo", DEMO)
    model = fresh(demo)
    report = inherit(model, [f"stage2,head={bare}", str(demo_run)])
    a, b = source_state(demo_run), source_state(other)
    for k, v in model.state_dict().items():
        src = b if k.startswith(("stages.2.", "head.")) else a
        assert torch.equal(v, src[k]), k
    assert any("no spec" in n for n in report.parts[2].notes)
    assert [s["kind"] for s in report.as_json()["sources"]] == ["checkpoint", "run"]


def test_mapping_rules() -> None:
    assert split_mapping("stage0-1,head=runs/a=b") == ("stage0-1,head", "runs/a=b")
    assert split_mapping("runs/x=y") == (None, "runs/x=y")
    assert plan_parts(["stage0-1=A", "B"], 3) == {
        "stage0": "A", "stage1": "A", "stage2": "B", "head": "B"}
    with pytest.raises(InheritError, match="stage1 is given twice"):
        plan_parts(["stage0-1=A", "stage1=B"], 3)
    with pytest.raises(InheritError, match="two sources for every part"):
        plan_parts(["A", "B"], 3)
    with pytest.raises(InheritError, match="not a stage range"):
        plan_parts(["stage2-5=A"], 3)


def test_bad_sources_are_clear_errors(tmp_path: Path) -> None:
    demo = spec_file(tmp_path, "demo", DEMO)
    with pytest.raises(InheritError, match="no such file or folder, and not a known release name"):
        inherit(fresh(demo), [str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InheritError, match="without checkpoints/last.safetensors"):
        inherit(fresh(demo), [str(tmp_path / "empty")])


def test_train_records_inheritance(tmp_path: Path, demo_run: Path) -> None:
    from click.testing import CliRunner

    from mfdsl.cli import main

    out = tmp_path / "run"
    args = ["train", str(SPECS / "hybrid_tiny_attn.mf"), "--inherit",
            f"stage0-1={demo_run}", "--max-steps", "2", "--workers", "0", "--no-tensorboard",
            "--no-progress", "-o", str(out)]
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "inherited weights:" in r.output
    rec = json.loads((out / "inheritance.json").read_text())
    parts = {p["part"]: p for p in rec["parts"]}
    assert parts["stage0"]["copied"] == 14 and parts["stage1"]["copied"] == 14
    assert parts["stage2"]["copied"] == 0 and parts["head"]["new"] == 4
    assert rec["sources"][0]["kind"] == "run" and rec["sources"][0]["model"] == "demo_tiny"
    # --init-from and --inherit together: one message, exit 2
    r = CliRunner().invoke(main, args[:-1] + [str(tmp_path / "run2"), "--init-from",
                                              str(demo_run)], catch_exceptions=False)
    assert r.exit_code == 2 and "give one" in r.output
