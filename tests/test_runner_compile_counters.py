"""The compiled training loop compiles each of its callables once, during warm-up, and
never again: no graph break, no recompilation across train -> validation -> train, EMA,
gradient accumulation, a partial last validation batch (padded to the first batch's
shape: one shape by design), periodic checkpoints and a resume. A partial last training
batch never happens: the training loader drops it (``drop_last``), so every micro-batch
has the per-device shape.
Read from dynamo's counters (:class:`mfdsl.target.compile_counts.CompileCounts`) by a hook
in the real loop (``api.train`` with ``compile=True``, CPU inductor, the CUDA defaults
emulated: channels-last and bf16 autocast)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import pytest

from conftest import train_spec, write_colour_folder

pytestmark = pytest.mark.slow


def test_compiled_loop_never_breaks_or_recompiles(tmp_path: Path) -> None:
    import torch

    from mfdsl.runner import api
    from mfdsl.runner.hooks import Hook
    from mfdsl.target.compile_counts import CompileCounts

    torch._dynamo.reset()  # counters and caches of earlier tests in this process
    seen: List[Tuple[str, CompileCounts]] = []

    class Watch(Hook):  # runs after the run's own hooks: validation has happened
        def step_end(self, at):
            seen.append((f"step {at.step}", CompileCounts.now()))

        def epoch_end(self, end):
            seen.append((f"epoch {end.epoch} end", CompileCounts.now()))

    # 12 training images at 2 per device x accum 2: 3 steps an epoch; 9 validation
    # images at 2 a batch: the last batch holds 1.
    data = write_colour_folder(tmp_path / "data", n_train=4, n_val=3)
    spec = train_spec(name="watch", ema=0.99, epochs=2, batch_size=4)
    common = dict(data=str(data), output=str(tmp_path / "run"), workers=0,
                  per_device_batch=2, device="cpu", compile=True, channels_last=True,
                  amp=True, ckpt_every=2, log_every=1, progress=False, tensorboard=False)
    first = api.train(spec, hooks=[Watch()], max_steps=4, **common)
    assert first["steps"] == 4
    seen.append(("resume", CompileCounts.now()))
    second = api.train(spec, hooks=[Watch()], resume="auto", allow_recipe_change=True,
                       **common)  # the 4-step cap lifted
    assert second["steps"] == 6 and second["final_val"]["images"] == 9

    counts = dict(seen)
    assert "step 5" in counts and "step 6" in counts  # the resumed steps ran
    end = seen[-1][1]
    assert end.graph_breaks == 0, end.break_reasons
    # Warm-up: the training graph at the first step, the inference graph at the first
    # validation; each compiled once (a separate callable, not a recompilation).
    assert counts["step 1"].frames == 1
    assert counts["epoch 0 end"].frames == 2
    assert end.recompiles == 0, [(k, c.as_dict()) for k, c in seen]
    assert all(c.frames == 2 for k, c in seen[seen.index(("epoch 0 end",
                                                           counts["epoch 0 end"])):]), seen
