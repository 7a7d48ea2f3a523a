"""The training loop calls its hooks in order and reads the host only where one asks."""
from __future__ import annotations

import json
from typing import List, Tuple

import pytest

from conftest import SPECS, two_class_folder
from mfdsl.runner import hooks as H
from mfdsl.runner.errors import RunError
from mfdsl.runner import api
from mfdsl.runner.loop import Loop


class Recorder(H.Hook):
    def __init__(self) -> None:
        self.events: List[Tuple] = []

    def step_start(self, step: int) -> None:
        self.events.append(("step_start", step))

    def step_end(self, at: H.StepEnd) -> None:
        self.events.append(("step_end", at.step, at.epoch, at.mid_epoch, at.reads is not None))

    def epoch_start(self, epoch: int) -> None:
        self.events.append(("epoch_start", epoch))

    def epoch_end(self, end: H.EpochEnd) -> None:
        self.events.append(("epoch_end", end.epoch, end.complete))

    def close(self) -> None:
        self.events.append(("close",))


@pytest.mark.slow  # a real 12-step run with validation and checkpoints (~3 s here)
def test_hooks_see_every_step_and_reads_happen_only_where_asked(tmp_path):
    rec = Recorder()
    data = two_class_folder(tmp_path / "data", 12)  # 24 images, batch 4: 6 steps an epoch
    out = tmp_path / "r"
    # Hooks are given to the loop from outside (the Python API), not patched in.
    summary = api.train(SPECS / "demo_tiny.mf", hooks=[rec], data=str(data), output=str(out),
                        workers=0, tensorboard=False, batch_size=4, log_every=3,
                        ckpt_every=4, progress=False, recipe={"epochs": 2, "warmup_epochs": 0})
    assert summary["steps"] == 12
    ends = [e for e in rec.events if e[0] == "step_end"]
    assert [e[1] for e in ends] == list(range(1, 13))
    # Log steps (every 3rd, and the last) and mid-epoch checkpoints (4, 8): nothing else.
    assert [e[1] for e in ends if e[4]] == [3, 4, 6, 8, 9, 12]
    assert [e[1] for e in ends if not e[3]] == [6, 12]  # each epoch's last step
    assert [e[2] for e in ends] == [0] * 6 + [1] * 6
    assert [e for e in rec.events if e[0] == "step_start"] == [("step_start", s)
                                                              for s in range(12)]
    order = [e[0] for e in rec.events if e[0] in ("epoch_start", "epoch_end", "close")]
    assert order == ["epoch_start", "epoch_end", "epoch_start", "epoch_end", "close"]
    assert ("epoch_end", 1, True) in rec.events

    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [3, 6, 9, 12]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    # Validation ran before the epoch row that reports it.
    assert [r["val_top1"] is not None for r in epochs] == [True, True]
    ckpts = sorted(p.name for p in (out / "checkpoints").glob("ckpt-*.safetensors"))
    assert any("00000008" in n or n.endswith("-8.safetensors") for n in ckpts), ckpts


def test_a_runs_hooks_are_listed_in_their_order():
    from types import SimpleNamespace

    from mfdsl.runner.train import RunLog, run_hooks

    hooks = run_hooks(SimpleNamespace(), SimpleNamespace(), SimpleNamespace(is_main=True),
                      SimpleNamespace(progress=False, eval_every=1, log_every=1, ckpt_every=0),
                      SimpleNamespace(latest=None), None, None, None, "out",
                      RunLog("out", False), H.TestFaults(True))
    assert [type(h).__name__ for h in hooks] == [
        "TestFaults", "Preemption", "Progress", "Validation", "TrainMetrics", "Checkpoints",
        "TestKill"]


def test_the_loop_closes_its_hooks_when_a_step_fails(tmp_path, monkeypatch):
    rec = Recorder()
    data = two_class_folder(tmp_path / "data", 4)

    def boom(self, it):
        raise RunError("a step failed")

    monkeypatch.setattr(Loop, "step", boom)
    with pytest.raises(RunError, match="a step failed"):
        api.train(SPECS / "demo_tiny.mf", hooks=[rec], data=str(data),
                  output=str(tmp_path / "r"), workers=0, tensorboard=False, batch_size=4,
                  progress=False, recipe={"epochs": 1, "warmup_epochs": 0})
    assert rec.events[-1] == ("close",)


def test_the_bar_of_a_run_cut_short_ends_where_the_run_does(monkeypatch):
    from types import SimpleNamespace

    import tqdm

    made = {}

    class Bar:
        def __init__(self, total, initial, **kw):
            made.update(total=total, initial=initial)

        def close(self):
            pass

    monkeypatch.setattr(tqdm, "tqdm", Bar)
    plan = SimpleNamespace(steps_per_epoch=46, total_epochs=1, total_steps=4,
                           batch=SimpleNamespace(accum=1))
    H.Progress(True, plan, SimpleNamespace(micro=0, step=0), print).epoch_start(0)
    assert made == {"total": 4, "initial": 0}  # --max-steps 4 inside a 46-step epoch
    plan.total_steps = 100
    H.Progress(True, plan, SimpleNamespace(micro=10, step=56), print).epoch_start(1)  # resumed
    assert made == {"total": 46, "initial": 10}
