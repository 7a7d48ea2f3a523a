"""One resolver for every weights argument: file, run folder, release (mfdsl.weights.sources),
and every option that takes weights reads a name through it."""
from __future__ import annotations

import re

import pytest

from mfdsl import runs
from mfdsl.runner.errors import RunError
from mfdsl.runner.eval_run import resolve_checkpoint_path
from mfdsl.runner.plan import finetune_source
from mfdsl.weights.inherit import InheritError, open_source
from mfdsl.weights.sources import DEFAULT_TAG, FILE, RELEASE, RUN, resolve_weights


def _run(tmp_path, *stems):
    folder = tmp_path / "run"
    (folder / runs.CHECKPOINTS_DIR).mkdir(parents=True)
    for stem in stems:
        (folder / runs.CHECKPOINTS_DIR / f"{stem}{runs.WEIGHTS_EXT}").write_bytes(b"w")
    return folder


def test_a_run_folder_means_the_first_of_its_stems_present(tmp_path):
    folder = _run(tmp_path, runs.LAST, runs.BEST)
    last = str(folder / runs.CHECKPOINTS_DIR / f"{runs.LAST}{runs.WEIGHTS_EXT}")
    best = str(folder / runs.CHECKPOINTS_DIR / f"{runs.BEST}{runs.WEIGHTS_EXT}")
    got = resolve_weights(str(folder))
    assert (got.kind, got.path, got.run) == (RUN, last, str(folder))
    assert resolve_weights(str(folder), run_stems=(runs.BEST, runs.LAST)).path == best
    # Its checkpoints/ folder names the same run.
    inner = resolve_weights(str(folder / runs.CHECKPOINTS_DIR))
    assert (inner.path, inner.run) == (last, str(folder))


def test_a_file_is_itself_and_knows_its_run(tmp_path):
    folder = _run(tmp_path, runs.LAST)
    w = folder / runs.CHECKPOINTS_DIR / f"{runs.LAST}{runs.WEIGHTS_EXT}"
    got = resolve_weights(str(w))
    assert (got.kind, got.path, got.run) == (FILE, str(w), str(folder))
    loose = tmp_path / "w.pt"
    loose.write_bytes(b"w")
    assert resolve_weights(str(loose)).run is None


def test_release_names_tags_and_zoo_models():
    from conftest import SPECS
    from mfdsl.api import load_spec

    name = f"caformer_s18.{DEFAULT_TAG}"
    assert resolve_weights(name).release.name == name
    spec = load_spec(str(SPECS / "caformer_s18.mf"))
    tagged = resolve_weights(DEFAULT_TAG, spec=spec)
    assert (tagged.kind, tagged.ref) == (RELEASE, name)
    assert resolve_weights("caformer_s18") is None
    assert resolve_weights("caformer_s18", default_tag=DEFAULT_TAG).ref == name
    assert resolve_weights("no_such_thing", spec=spec, default_tag=DEFAULT_TAG) is None


def test_every_option_reads_a_run_folder_the_same_way(tmp_path):
    folder = _run(tmp_path, runs.LAST, runs.BEST)
    ckpts = folder / runs.CHECKPOINTS_DIR
    assert resolve_checkpoint_path(str(folder)) == str(ckpts / f"{runs.LAST}{runs.WEIGHTS_EXT}")
    assert finetune_source(str(folder)) == str(ckpts / f"{runs.BEST}{runs.WEIGHTS_EXT}")
    assert finetune_source("caformer_s18") == f"caformer_s18.{DEFAULT_TAG}"

    empty = tmp_path / "empty"
    empty.mkdir()
    assert resolve_weights(str(empty)).path is None
    last = "a folder without checkpoints/last.safetensors (a run folder is expected)"
    with pytest.raises(RunError, match=re.escape(f"--checkpoint {empty}: {last}")):
        resolve_checkpoint_path(str(empty))
    with pytest.raises(InheritError, match=re.escape(f"--inherit {empty}: {last}")):
        open_source(str(empty), {})
    with pytest.raises(RunError, match=re.escape(
            f"finetune_from {empty}: a folder without checkpoints/best.safetensors or "
            "checkpoints/last.safetensors")):
        finetune_source(str(empty))
    # A name that is nothing: the same words from every option that takes releases.
    nothing = str(tmp_path / "nothing")
    unknown = "no such file or folder, and not a known release name"
    with pytest.raises(InheritError, match=re.escape(f"--inherit {nothing}: {unknown}")):
        open_source(nothing, {})
    with pytest.raises(RunError, match=re.escape(f"finetune_from {nothing}: {unknown}")):
        finetune_source(nothing)


def test_init_from_a_run_folder_loads_its_last_weights(tmp_path):
    import torch
    from safetensors.torch import save_file

    from conftest import train_spec
    from mfdsl.api import build_model
    from mfdsl.ckptformats.weights import CheckpointError
    from mfdsl.weights import load_weights

    spec = train_spec()
    torch.manual_seed(0)
    trained = build_model(spec)
    folder = _run(tmp_path)
    save_file(trained.state_dict(), str(folder / runs.CHECKPOINTS_DIR /
                                        f"{runs.LAST}{runs.WEIGHTS_EXT}"))
    torch.manual_seed(1)
    fresh = build_model(spec)
    load_weights(fresh, str(folder), spec)
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(),
                                                 fresh.state_dict().values()))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="a folder without checkpoints"):
        load_weights(fresh, str(empty), spec)


@pytest.mark.slow
def test_init_from_another_models_run_says_the_option_and_what_it_loaded(tmp_path):
    from conftest import SPECS, run, two_class_folder

    data = two_class_folder(tmp_path / "data", 4)
    fast = ["--workers", "0", "--no-tensorboard", "--batch-size", "4", "--max-steps", "1",
            "--epochs", "1", "--warmup-epochs", "0", "--no-progress"]
    code, text = run("train", SPECS / "demo_tiny.mf", "--data", data, "-o", tmp_path / "a",
                     *fast)
    assert code == 0, text
    code, text = run("train", SPECS / "demo_tiny.mf", "--data", data, "-o", tmp_path / "b",
                     "--init-from", tmp_path / "a", *fast)
    assert code == 0, text
    assert f"starting weights: {tmp_path / 'a' / 'checkpoints' / 'last.safetensors'}" in text
    code, text = run("train", SPECS / "hybrid_tiny_attn.mf", "--data", data,
                     "-o", tmp_path / "c", "--init-from", tmp_path / "a", *fast)
    assert code == 2, text
    assert "error: checkpoint " in text and "checkpoint: checkpoint" not in text
    assert "--inherit takes the parts" in text and "strict=False" not in text
