"""A fine-tune from a run folder or a release in one command (``--init-from``): what the
plan refuses (a head of other classes) and what loading does (adapters saved unmerged are
merged into a plain model; a 21K head is mapped to 1000 classes). Tiny models, no
training: the plan and the load are what ``mfdsl train`` runs first."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import List, Sequence

import pytest
import torch

from mfdsl import runs
from mfdsl.api import build_model
from mfdsl.ckptformats.in21k import class_map
from mfdsl.ir import with_overrides
from mfdsl.layers.adapters import LowRankDelta, merge_adapters
from mfdsl.runner import api
from mfdsl.runner.checkpointing import atomic_save_weights
from mfdsl.runner.errors import RunError
from mfdsl.runner.finetune import apply_finetune
from mfdsl.runner.official import HEAD_REMAP
from mfdsl.runner.parts import load_start_weights
from mfdsl.runner.run_folder import RunContext

from conftest import run, solid_folder, train_spec, write_spec

ABC = ["a", "b", "c"]


def fake_run(folder: Path, spec, model: torch.nn.Module, classes: Sequence[str],
             context: bool = True) -> Path:
    """A run folder as a run leaves it: run.json and checkpoints/last.safetensors with
    the run context in its metadata (``context=False``: a bare weights file, no record)."""
    (folder / runs.CHECKPOINTS_DIR).mkdir(parents=True)
    meta = {"step": 1, "epoch": 0, "format": "mfdsl"}
    if context:
        ctx = RunContext.of(spec, classes).to_json()
        (folder / runs.RUN_FILE).write_text(json.dumps(ctx))
        meta["run"] = ctx
    atomic_save_weights(model.state_dict(), str(folder / runs.LAST_WEIGHTS), meta)
    return folder


def load(spec, **opts) -> "tuple[torch.nn.Module, List[str]]":
    """The plan's starting weights loaded into a fresh model, and the log lines."""
    plan = api.plan_run(spec, **opts)
    torch.manual_seed(123)
    model = build_model(plan.spec)
    log: List[str] = []
    load_start_weights(model, plan, None, log.append)
    return model, log


def adapter_model(seed: int = 0):
    spec = train_spec(adapters="mlp", adapter_rank=2, adapter_alpha=3.0)
    torch.manual_seed(seed)
    model = build_model(spec)
    apply_finetune(model, spec.recipe)
    with torch.no_grad():  # B starts at zero: give the adapters something to merge
        for m in model.modules():
            if isinstance(m, LowRankDelta):
                m.lora_b.normal_(0, 0.1)
    return spec, model


def test_an_adapter_run_loads_into_a_plain_spec_merged(tmp_path: Path) -> None:
    spec, model = adapter_model()
    src = fake_run(tmp_path / "run", spec, model, ABC)
    data = solid_folder(tmp_path / "data", 3, {"a": 30, "b": 120, "c": 220})
    got, log = load(train_spec(), data=str(data), init_from=str(src))
    merged = copy.deepcopy(model)
    assert merge_adapters(merged)
    want = merged.state_dict()
    assert set(got.state_dict()) == set(want)
    for k, v in got.state_dict().items():
        assert torch.equal(v, want[k]), k
    assert any("low-rank adapters (rank 2, alpha 3) merged" in line for line in log)


def test_unmerged_adapters_without_a_run_record_are_refused(tmp_path: Path) -> None:
    spec, model = adapter_model()
    src = fake_run(tmp_path / "run", spec, model, ABC, context=False)
    with pytest.raises(RunError, match="unmerged low-rank adapters .* no run record says"):
        load(train_spec(), dataset_size=64, init_from=str(src))


def test_a_plain_run_folder_loads_as_it_was_saved(tmp_path: Path) -> None:
    spec = train_spec()
    torch.manual_seed(5)
    trained = build_model(spec)
    src = fake_run(tmp_path / "run", spec, trained, ABC)
    got, log = load(spec, dataset_size=64, init_from=str(src))
    for k, v in got.state_dict().items():
        assert torch.equal(v, trained.state_dict()[k]), k
    assert not any("adapters" in line for line in log)


def test_a_run_of_another_class_count_is_refused_with_the_inherit_way(tmp_path: Path) -> None:
    spec = train_spec()
    src = fake_run(tmp_path / "run", spec, build_model(spec), ABC)
    two = with_overrides(spec, num_classes=2)
    with pytest.raises(RunError, match=r"head has 3 classes \(trained on a, b, c\); spec "
                                       r"'tiny' has 2.*--inherit stage0-1="):
        api.plan_run(two, dataset_size=64, init_from=str(src))
    # The command line says it too, before anything runs.
    path = write_spec(tmp_path / "two.mf", two)
    code, text = run("train", path, "--dry-run", "--dataset-size", 64, "--init-from", src)
    assert code == 2 and "head has 3 classes" in text, text


def test_a_run_whose_classes_are_not_the_datas_is_refused(tmp_path: Path) -> None:
    spec = train_spec()
    src = fake_run(tmp_path / "run", spec, build_model(spec), ABC)
    other = solid_folder(tmp_path / "other", 3, {"a": 30, "b": 120, "x": 220})
    with pytest.raises(RunError, match="the run's class 2 is 'c', the training data's is 'x'"):
        api.plan_run(spec, data=str(other), init_from=str(src))
    same = solid_folder(tmp_path / "same", 3, {"a": 30, "b": 120, "c": 220})
    api.plan_run(spec, data=str(same), init_from=str(src))  # the run's classes: accepted


def test_a_21k_run_starts_a_1k_spec_through_the_class_map(tmp_path: Path) -> None:
    spec21 = with_overrides(train_spec(), num_classes=21841)
    torch.manual_seed(2)
    trained = build_model(spec21)
    wnids = [f"n{i:08d}" for i in range(21841)]
    src = fake_run(tmp_path / "run", spec21, trained, wnids)
    spec1k = with_overrides(train_spec(), num_classes=1000)
    plan = api.plan_run(spec1k, dataset_size=64, init_from=str(src))
    assert plan.deviations == [] and plan.to_json()["official"] is None
    got, log = load(spec1k, dataset_size=64, init_from=str(src))
    in1k, in21k, missing = class_map()
    w21, w1 = trained.state_dict()["head.fc.weight"], got.state_dict()["head.fc.weight"]
    assert torch.equal(w1[list(in1k)], w21[list(in21k)])
    assert torch.equal(w1[missing], w21.mean(0))
    assert any("ImageNet-21K head" in line for line in log)
    # A 21841-class run that is not fall11's sorted wnids cannot use the official map.
    bad = fake_run(tmp_path / "bad", spec21, trained, [f"c{i:05d}" for i in range(21841)])
    with pytest.raises(RunError, match="fall11's sorted wnids"):
        api.plan_run(spec1k, dataset_size=64, init_from=str(bad))


def test_a_21k_release_by_name_starts_a_1k_spec(tmp_path: Path, hub, monkeypatch) -> None:
    """``--init-from <model>.sail_in22k``: the release's 21841-class head is mapped, and
    the plan records it (here a stand-in release of the tiny model, from a local cache)."""
    from safetensors.torch import save_file

    from conftest import put_in_cache
    from mfdsl.weights.releases import RELEASES, Release

    release = Release(model="tiny", tag="sail_in22k", repo_id="timm/tiny.sail_in22k",
                      filename="model.safetensors", layout="mfdsl", num_classes=21841)
    monkeypatch.setitem(RELEASES, release.name, release)
    torch.manual_seed(3)
    src = build_model(with_overrides(train_spec(), num_classes=21841))
    save_file({k: v.contiguous() for k, v in src.state_dict().items()},
              str(tmp_path / "w.safetensors"))
    put_in_cache(hub, release.repo_id, release.filename,
                 (tmp_path / "w.safetensors").read_bytes())
    spec1k = with_overrides(train_spec(), num_classes=1000)
    plan = api.plan_run(spec1k, dataset_size=64, init_from=release.name)
    assert plan.init == {"kind": "init_from", "source": "tiny.sail_in22k"}
    got, log = load(spec1k, dataset_size=64, init_from=release.name)
    in1k, in21k, _ = class_map()
    assert torch.equal(got.state_dict()["head.fc.weight"][list(in1k)],
                       src.state_dict()["head.fc.weight"][list(in21k)])
    assert any("starting weights: tiny.sail_in22k" in line for line in log)


def test_the_21k_fine_tune_spec_records_the_head_mapping(tmp_path: Path, hub) -> None:
    from mfdsl.runner.plan import _start_classes

    assert _start_classes({"kind": "finetune_from", "source": "caformer_s18.sail_in22k"}) \
        == 21841
    specs = Path(__file__).resolve().parent.parent / "specs"
    plan = api.plan_run(specs / "caformer_s18_in21ft1k.mf", dataset_size=4096)
    assert plan.to_json()["official"]["head_from_21k"] == HEAD_REMAP
    assert not [d for d in plan.deviations if d["item"] == "head_from_21k"]


def test_inherit_takes_the_merged_weights_of_an_adapter_run(tmp_path: Path) -> None:
    from mfdsl.weights import inherit

    spec, model = adapter_model(seed=7)
    (tmp_path / "run").mkdir()
    write_spec(tmp_path / "run" / runs.SPEC_FILE, spec)
    src = fake_run(tmp_path / "run", spec, model, ABC)
    merged = copy.deepcopy(model)
    merge_adapters(merged)
    target = build_model(with_overrides(train_spec(), num_classes=2))
    inherit(target, [f"stage0-1={src}"])
    want = merged.state_dict()
    for k, v in target.state_dict().items():
        if k.startswith("stages."):
            assert torch.equal(v, want[k]), k


def test_eval_and_compile_read_an_adapter_runs_weights_merged(tmp_path: Path) -> None:
    # Every command that loads a run's weights into its plain model goes through one
    # loader: eval (with or without SPEC) and compile score the model the run trained.
    spec, model = adapter_model()
    src = fake_run(tmp_path / "run", spec, model, ABC)
    data = solid_folder(tmp_path / "data", 3, {"a": 30, "b": 120, "c": 220})
    weights = src / runs.LAST_WEIGHTS
    merged = copy.deepcopy(model)
    merge_adapters(merged)
    plain_spec = train_spec(adapters="mlp", adapter_rank=2, adapter_alpha=3.0)
    by_hand = fake_run(tmp_path / "merged", plain_spec, merged, ABC) / runs.LAST_WEIGHTS
    plain = write_spec(tmp_path / "plain.mf", train_spec())
    scores = []
    for args in (["eval", "-c", weights], ["eval", plain, "-c", weights],
                 ["eval", plain, "-c", by_hand]):
        code, out = run(*args, "--data", data / "val", "--device", "cpu", "--workers", "0",
                        "--json")
        assert code == 0, out
        scores.append(json.loads(out[out.index("{"):]))
    assert scores[0]["loss"] == scores[1]["loss"] == scores[2]["loss"], scores
    assert scores[0]["top1"] == scores[1]["top1"] == scores[2]["top1"], scores
    code, out = run("compile", plain, "--checkpoint", weights)
    assert code == 0, out
