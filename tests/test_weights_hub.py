"""Released weights by name: the table, a local Hugging Face cache (never the network),
verification, offline use and the errors a user meets."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest
import torch

from mfdsl.api import build_model, load_spec
from mfdsl.weights import (RELEASES, WeightsError, fetch, load_weights, releases_for,
                           resolve_release)
from specs_py import to_official_layout
from tolerances import assert_close

from conftest import put_in_cache, safetensors_bytes as _safetensors_bytes

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"


@pytest.fixture(scope="module")
def timm_poolformer():
    """timm's own poolformerv2_s12 (random init): the real key layout and shapes."""
    import timm

    torch.manual_seed(0)
    return timm.create_model("poolformerv2_s12", pretrained=False).eval()


# --- the table ----------------------------------------------------------------------------

def test_table_agrees_with_timm_default_cfgs() -> None:
    """Every tag timm publishes for ConvFormer/CAFormer/PoolFormerV2, with its context."""
    import timm.models.metaformer as tm

    seen = set()
    for model, dc in tm.default_cfgs.items():
        if not model.startswith(("convformer", "caformer", "poolformerv2")):
            continue
        for tag, cfg in dc.cfgs.items():
            name = f"{model}.{tag}"
            seen.add(name)
            r = RELEASES[name]
            assert r.repo_id == f"timm/{name}" and r.layout == "timm"
            assert (3, *r.img_size) == tuple(cfg.input_size)
            assert r.num_classes == cfg.num_classes
            assert r.crop_pct == cfg.crop_pct and r.interpolation == cfg.interpolation
            assert tuple(r.mean) == tuple(cfg.mean) and tuple(r.std) == tuple(cfg.std)
    timm_side = {n for n, r in RELEASES.items() if r.layout == "timm"}
    assert timm_side == seen
    assert len(seen) == 5 + 8 * 5


def test_identityformer_and_randformer_come_from_the_official_release() -> None:
    for fam in ("identityformer", "randformer"):
        for size in ("s12", "s24", "s36", "m36", "m48"):
            r = RELEASES[f"{fam}_{size}.sail_in1k"]
            assert (r.repo_id, r.filename, r.layout) == ("sail/dl", f"{fam}/{fam}_{size}.pth",
                                                         "official")
    # every paper spec of the zoo knows its weights
    for path in SPECS.glob("*.mf"):
        if path.stem.startswith(("identityformer", "randformer", "poolformerv2", "convformer",
                                 "caformer")):
            assert releases_for(path.stem), path.stem


@pytest.mark.parametrize("spec_name, which, want", [
    ("caformer_s18", True, "caformer_s18.sail_in1k"),
    ("caformer_s18_384", True, "caformer_s18.sail_in1k_384"),
    ("caformer_s18", "sail_in22k_ft_in1k", "caformer_s18.sail_in22k_ft_in1k"),
    ("caformer_s18_384", "sail_in22k_ft_in1k_384", "caformer_s18.sail_in22k_ft_in1k_384"),
    ("randformer_s12", True, "randformer_s12.sail_in1k"),
])
def test_resolve_by_spec(spec_name: str, which, want: str) -> None:
    assert resolve_release(load_spec(SPECS / f"{spec_name}.mf"), which).name == want


@pytest.mark.parametrize("spec_name, which, message", [
    ("caformer_s18", "sail_in1k_384", r"trained and is evaluated at 384x384.*caformer_s18_384"),
    ("caformer_s18_384", "sail_in1k", r"at 224x224"),
    ("caformer_s18", "sail_in22k", r"21841-class head.*--inherit"),
    ("caformer_s18", "sail_in5k", r"unknown release caformer_s18.sail_in5k"),
    ("demo_tiny", True, r"names no released weights"),
])
def test_context_contradictions_are_refused_before_any_download(
        hub: Path, spec_name: str, which, message: str) -> None:
    with pytest.raises(WeightsError, match=message):
        resolve_release(load_spec(SPECS / f"{spec_name}.mf"), which)


def test_a_21k_release_starts_a_1k_fine_tune() -> None:
    from mfdsl.weights import check_fits, lookup

    # the head is remapped by the official class map when loaded (test_ckptformats_in21k)
    check_fits(lookup("caformer_s18.sail_in22k"), load_spec(SPECS / "caformer_s18.mf"),
               purpose="init")


# --- fetching, verifying, loading ---------------------------------------------------------

def test_offline_with_nothing_cached_is_a_clear_error(hub: Path) -> None:
    with pytest.raises(WeightsError, match=r"not in the Hugging Face cache .*HF_HUB_OFFLINE"):
        fetch("caformer_s18.sail_in1k")


def test_pretrained_equals_timm_with_the_same_weights(hub: Path, tmp_path: Path,
                                                      timm_poolformer) -> None:
    data = _safetensors_bytes(timm_poolformer.state_dict(), tmp_path)
    put_in_cache(hub, "timm/poolformerv2_s12.sail_in1k", "model.safetensors", data)
    model = build_model(SPECS / "poolformerv2_s12.mf", pretrained=True).eval()
    assert model.pretrained_cfg["release"] == "poolformerv2_s12.sail_in1k"
    assert model.pretrained_cfg["hf_hub_id"] == "timm/poolformerv2_s12.sail_in1k"
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        # fp32, MLP hidden 4 x 512, 12 blocks of two products
        assert_close(model(x), timm_poolformer(x), k=2048, steps=2 * 12 + 2)


def test_corrupt_cached_file_is_refused(hub: Path, tmp_path: Path, timm_poolformer) -> None:
    data = _safetensors_bytes(timm_poolformer.state_dict(), tmp_path)
    blob = put_in_cache(hub, "timm/poolformerv2_s12.sail_in1k", "model.safetensors", data)
    raw = bytearray(blob.read_bytes())
    raw[-1] ^= 0xFF  # one flipped byte inside a tensor: still loads, silently wrong
    blob.write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match=r"corrupt: its sha256 is .* the hub says"):
        build_model(SPECS / "poolformerv2_s12.mf", pretrained=True)


def test_a_file_that_is_not_the_release_is_refused(hub: Path, tmp_path: Path) -> None:
    # mfdsl names where the release is in timm's layout: not what the hub serves.
    model = build_model(SPECS / "poolformerv2_s12.mf")
    data = _safetensors_bytes(model.state_dict(), tmp_path)
    put_in_cache(hub, "timm/poolformerv2_s12.sail_in1k", "model.safetensors", data)
    with pytest.raises(WeightsError, match="mfdsl key layout"):
        build_model(SPECS / "poolformerv2_s12.mf", pretrained=True)


def test_official_release_loads_and_init_from_by_name(hub: Path, tmp_path: Path) -> None:
    torch.manual_seed(3)
    src = build_model(SPECS / "identityformer_s12.mf")
    path = tmp_path / "identityformer_s12.pth"
    torch.save(to_official_layout(src.state_dict()), path)
    put_in_cache(hub, "sail/dl", "identityformer/identityformer_s12.pth", path.read_bytes())
    spec = load_spec(SPECS / "identityformer_s12.mf")
    dst = build_model(spec)
    report = load_weights(dst, "identityformer_s12.sail_in1k", spec)
    assert report.format == "official" and report.ok
    sd_src, sd_dst = src.state_dict(), dst.state_dict()
    assert all(torch.equal(sd_src[k], sd_dst[k]) for k in sd_src)
    # a tag of the spec's own model works too
    load_weights(build_model(spec), "sail_in1k", spec)


# --- the command line ---------------------------------------------------------------------

def _cli(*args: str, env: Dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    full = dict(os.environ, PYTHONPATH=str(ROOT), **env)
    return subprocess.run([sys.executable, "-m", "mfdsl", *args], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=600)


def _tiny_imagefolder(root: Path) -> Path:
    """ImageNet's layout with its 1000 class folders (a release's head is ImageNet's), each
    holding one small image (an empty class folder is refused)."""
    from PIL import Image

    for k in range(1000):
        folder = root / "val" / f"n{k:08d}"
        folder.mkdir(parents=True)
        Image.new("RGB", (40, 32), (k % 256, 50, 200 if k % 2 else 10)).save(folder / "0.png")
    return root


def test_cli_eval_pretrained_offline(hub: Path, tmp_path: Path, timm_poolformer) -> None:
    env = {"HF_HOME": str(hub), "HF_HUB_OFFLINE": "1"}
    data = _tiny_imagefolder(tmp_path / "data")
    spec = str(SPECS / "poolformerv2_s12.mf")
    # nothing cached: a clear message, exit 2, no traceback
    r = _cli("eval", spec, "--pretrained", "--data", str(data), "--workers", "0",
             env=env, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "not in the Hugging Face cache" in r.stderr and "Traceback" not in r.stderr
    put_in_cache(hub, "timm/poolformerv2_s12.sail_in1k", "model.safetensors",
                 _safetensors_bytes(timm_poolformer.state_dict(), tmp_path))
    # at 96 px (an explicit override of the release's 224) to keep 1000 images quick
    r = _cli("eval", spec, "--pretrained", "--data", str(data), "--workers", "0", "--json",
             "--img-size", "96", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["images"] == 1000 and res["checkpoint_format"] == "timm", res
    assert "models--timm--poolformerv2_s12.sail_in1k" in res["checkpoint"]
    # a 384 tag on the 224 spec: refused, with the spec to use
    r = _cli("eval", spec, "--pretrained", "sail_in1k_384", "--data", str(data),
             env=env, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "unknown release poolformerv2_s12.sail_in1k_384" in r.stderr
    r = _cli("eval", spec, "--data", str(data), env=env, cwd=tmp_path)
    assert r.returncode == 2 and "one of --checkpoint and --pretrained" in r.stderr


def test_inherit_from_a_release_by_name(hub: Path, tmp_path: Path, timm_poolformer) -> None:
    """A hybrid takes PoolFormerV2-S12's stem and first two stages from the cached release;
    its attention stage and 10-class head stay new, and the report says why."""
    from mfdsl.weights import inherit

    put_in_cache(hub, "timm/poolformerv2_s12.sail_in1k", "model.safetensors",
                 _safetensors_bytes(timm_poolformer.state_dict(), tmp_path))
    spec = tmp_path / "pf_hybrid.mf"
    spec.write_text("""model pf_hybrid {
  input 3x64x64
  classes 10
  norm modified_layernorm(bias=false, eps=1e-6)
  stage pooling   x2 @64
  stage pooling   x3 @128
  stage attention x1 @320  res_scale 1.0
  head linear
}
""")
    torch.manual_seed(0)
    model = build_model(spec)
    report = inherit(model, ["poolformerv2_s12.sail_in1k"])
    theirs = timm_poolformer.state_dict()
    sd = model.state_dict()
    for k in ("stem.conv.weight", "stages.1.blocks.1.mlp.fc1.weight",
              "stages.2.downsample.conv.weight"):
        assert report.fate(k).status == "copied", k
    # the output norm follows the last stage's width: 320 here, 512 in the release
    assert report.fate("head.norm.weight").reason == "shape [320], source [512]"
    # timm keeps MLP weights as 1x1 convs and names the stem norm "norm": both mapped
    assert torch.equal(sd["stages.1.blocks.1.mlp.fc1.weight"],
                       theirs["stages.1.blocks.1.mlp.fc1.weight"].flatten(1))
    assert torch.equal(sd["stem.post_norm.weight"], theirs["stem.norm.weight"])
    assert report.fate("stages.1.blocks.2.norm1.weight").reason == "the source stage has 2 blocks"
    assert report.fate("stages.2.blocks.0.norm1.weight").reason.startswith(
        "mixer attention (source: pooling)")
    assert report.fate("head.fc.weight").reason == "10 classes, the source has 1000"
    assert report.as_json()["sources"][0]["release"] == "poolformerv2_s12.sail_in1k"


def test_weights_list_and_fetch_commands(hub: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from mfdsl.cli import main

    data = b"not even weights"  # fetch checks the hub's sha256 only; loading checks the rest
    put_in_cache(hub, "sail/dl", "randformer/randformer_s12.pth", data)
    r = CliRunner().invoke(main, ["weights", "list", "randformer_s12", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert [x["name"] for x in rows] == ["randformer_s12.sail_in1k"]
    assert rows[0]["cached"] and rows[0]["url"].endswith("sail/dl/resolve/main/randformer/"
                                                         "randformer_s12.pth")
    r = CliRunner().invoke(main, ["weights", "fetch", "randformer_s12.sail_in1k"])
    assert r.exit_code == 0 and "randformer_s12.pth" in r.output
    r = CliRunner().invoke(main, ["weights", "fetch", "caformer_s18.sail_in1k"])
    assert r.exit_code == 2 and "HF_HUB_OFFLINE" in r.output
    r = CliRunner().invoke(main, ["weights", "list", "demo_tiny"])
    assert r.exit_code == 2 and "no released weights" in r.output


def test_release_context_wins_over_the_spec_eval_block() -> None:
    from mfdsl.ir import with_overrides
    from mfdsl.weights import apply_release_context

    spec = load_spec(SPECS / "caformer_s18.mf")
    same, notes = apply_release_context(spec, RELEASES["caformer_s18.sail_in1k"])
    assert same is spec and notes == []
    odd = with_overrides(spec, eval=with_overrides(spec.eval, crop_pct=0.875,
                                                   mean=[0.5, 0.5, 0.5]))
    fixed, notes = apply_release_context(odd, RELEASES["caformer_s18.sail_in1k"])
    assert fixed.eval.crop_pct == 1.0 and fixed.eval.mean == (0.485, 0.456, 0.406)
    assert len(notes) == 2 and "crop_pct: the spec says 0.875" in notes[0]
