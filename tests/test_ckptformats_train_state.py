"""mfdsl.ckptformats.train_state: mfdsl's own training pair is read in one place, and the
runner reports what it cannot read exactly as before (a RunError with the same message)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mfdsl.ckptformats import CheckpointError
from mfdsl.ckptformats import train_state as ts
from mfdsl.runner import checkpointing as ckpt
from mfdsl.runner.errors import RunError


def test_the_runner_uses_the_formats_names():
    assert (ckpt.WEIGHTS_EXT, ckpt.STATE_EXT, ckpt.STATE_FORMAT) == (
        ".safetensors", ".state.pt", "mfdsl-train-state")
    assert ckpt.weights_meta is ts.weights_meta


def test_a_written_pair_reads_back(tmp_path: Path):
    w = ckpt.CheckpointWriter(str(tmp_path), keep_recent=1, context={"run_id": "r1"})
    sd = {"a": torch.arange(6.0).reshape(2, 3)}
    stem = w.save(7, 2, sd, {"batches_in_epoch": 3}, is_best=False)
    meta = ts.weights_meta(stem + ts.WEIGHTS_EXT)
    assert meta == {"step": 7, "epoch": 2, "format": "mfdsl", "run": {"run_id": "r1"}}
    state = ts.read_state(stem + ts.STATE_EXT)
    assert (state["format"], state["step"], state["epoch"], state["batches_in_epoch"]) == (
        ts.STATE_FORMAT, 7, 2, 3)
    assert torch.equal(ts.read_weights(stem + ts.WEIGHTS_EXT)["a"], sd["a"])


def test_foreign_or_broken_files(tmp_path: Path):
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"a": torch.zeros(2)}, str(plain))  # a safetensors file without mfdsl's metadata
    assert ts.weights_meta(str(plain)) is None
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a file format")
    assert ts.weights_meta(str(junk)) is None
    other = tmp_path / "other.state.pt"
    torch.save({"format": "something-else"}, str(other))
    cases = [
        (str(tmp_path / "none.state.pt"), ts.read_state, "training state file not found: "),
        (str(other), ts.read_state, "is not an mfdsl training state file"),
        (str(junk), ts.read_state, "cannot read training state "),
        (str(junk), ts.read_weights, "cannot read weights "),
    ]
    runner = {ts.read_state: ckpt.load_state, ts.read_weights: ckpt.load_weights_file}
    for path, read, text in cases:
        with pytest.raises(CheckpointError) as low:
            read(path)
        assert text in str(low.value) and path in str(low.value)
        with pytest.raises(RunError) as high:  # the runner's wording is the same message
            runner[read](path)
        assert str(high.value) == str(low.value)
        assert high.value.render() == f"error: {low.value}"


def test_a_refused_resume_and_a_weights_load_word_a_mismatch_alike():
    import torch

    from mfdsl.ckptformats.weights import LoadReport

    model = {"a.weight": torch.zeros(2, 3), "b.weight": torch.zeros(4)}
    ckpt = {"a.weight": torch.zeros(3, 3), "c.bias": torch.zeros(1)}
    report = LoadReport.compare(model, ckpt)
    assert (report.missing, report.unexpected) == (["b.weight"], ["c.bias"])
    assert report.mismatched == [("a.weight", (2, 3), (3, 3))]
    lines = report.problems()
    assert lines == ["  missing from the checkpoint (1):", "    b.weight",
                     "  not in the model (1):", "    c.bias",
                     "  wrong shape (1):", "    a.weight: model expects [2, 3], checkpoint has [3, 3]"]
    # summary() (what load_checkpoint reports) is the same lines under its heading.
    assert report.summary().splitlines()[1:] == lines
    many = LoadReport.compare({f"k{i}": torch.zeros(1) for i in range(12)}, {})
    assert many.problems(8)[-1] == "    ... and 4 more" and len(many.problems(8)) == 10
