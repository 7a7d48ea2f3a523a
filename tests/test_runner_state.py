"""The checkpoint state schema, stated once by TrainState: what to_checkpoint writes,
from_checkpoint reads back, through a real state file."""
from __future__ import annotations

from pathlib import Path

import torch

from mfdsl.runner import checkpointing as ckpt
from mfdsl.runner.state import SavedParts, TrainState


def _parts(**kw) -> SavedParts:
    base = dict(optimizer={"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]},
                schedule={"step": 7}, scaler=None, ema={"w": torch.ones(2)},
                rng=[{"torch": torch.arange(3)}, {"torch": torch.arange(4)}],
                world_size=2, per_device=8, accum=2, global_batch=32, seed=5, best_by="top1")
    base.update(kw)
    return SavedParts(**base)


def test_round_trip_through_a_state_file(tmp_path: Path) -> None:
    st = TrainState(step=12, epoch=3, micro=5, best_top1=41.5, nan_skipped=2,
                    nan_consecutive=1)
    st.unreadable.merge({"a.jpg": [2, "truncated"]})
    written = st.to_checkpoint(_parts(), {"top1": 40.0, "ema_top1": 41.5})
    # As the checkpoint writer stores it (format tag, step and epoch from its own args).
    w = ckpt.CheckpointWriter(str(tmp_path), keep_recent=2)
    w.save(st.step, st.epoch, {"x": torch.zeros(1)}, written, False)
    stem = str(tmp_path / "ckpt-00000012")
    loaded = ckpt.load_state(stem + ckpt.STATE_EXT)  # weights_only=True
    back, parts = TrainState.from_checkpoint(loaded)
    assert (back.step, back.epoch, back.micro) == (12, 3, 5)
    assert (back.best_top1, back.nan_skipped, back.nan_consecutive) == (41.5, 2, 1)
    assert back.last_saved_step == 12
    assert len(back.unreadable) == 1 and back.unreadable.state() == st.unreadable.state()
    assert loaded["val_top1"] == 40.0 and loaded["val_ema_top1"] == 41.5
    assert loaded["skipped_images"] == len(st.unreadable)
    assert parts.optimizer == _parts().optimizer and parts.schedule == {"step": 7}
    assert torch.equal(parts.ema["w"], torch.ones(2)) and parts.scaler is None
    assert [torch.equal(a["torch"], b["torch"]) for a, b in zip(parts.rng, _parts().rng)] \
        == [True, True]
    assert (parts.global_batch, parts.seed, parts.best_by) == (32, 5, "top1")
    assert parts.same_layout(2, 8, 2)
    assert not parts.same_layout(1, 8, 2) and not parts.same_layout(2, 4, 2) \
        and not parts.same_layout(2, 8, 1)


def test_every_written_key_is_the_schemas() -> None:
    written = TrainState().to_checkpoint(_parts(), None)
    assert set(written) == {
        "step", "epoch", "optimizer", "schedule", "scaler", "ema", "rng", "batches_in_epoch",
        "sampler_epoch", "best_top1", "best_by", "val_top1", "val_ema_top1", "nan_skipped",
        "nan_consecutive", "skipped_images", "unreadable_images", "unreadable_val_images",
        "world_size", "per_device", "accum", "global_batch", "seed"}
    assert written["val_top1"] is None and written["val_ema_top1"] is None


def test_an_older_state_without_the_optional_keys_reads_with_defaults() -> None:
    st, parts = TrainState.from_checkpoint({"step": 4, "epoch": 1, "batches_in_epoch": 0})
    assert (st.step, st.best_top1, st.nan_skipped, len(st.unreadable)) == (4, -1.0, 0, 0)
    assert parts.optimizer is None and parts.rng == []
    assert not parts.same_layout(1, 8, 1)  # unknown layout: the data position restarts
