"""mfdsl.runner.step: one optimizer step with no host reads; non-finite steps skipped on
the device, leaving weights and optimizer state bitwise as they were."""
from __future__ import annotations

import copy
from typing import List

import pytest
import torch
import torch.nn as nn

from mfdsl.api import build_model
from mfdsl.runner.optim import create_optimizer
from mfdsl.runner.step import StepLog, StepParts, masked_step, train_step, uncount_skipped_steps

from conftest import same_nested, train_spec
from devices import DEVICES

# Every way Python code can read a tensor's value onto the host.
READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


def _parts(device: str, optimizer: str, *, scaler: bool = False, ema: bool = False,
           accum: int = 2, clip: float = 1.0) -> StepParts:
    torch.manual_seed(0)
    spec = train_spec(optimizer=optimizer)
    model = build_model(spec).to(device)
    crit = nn.CrossEntropyLoss()
    opt = create_optimizer(model, spec.recipe, 1e-3)
    ema_model = None
    if ema:
        from timm.utils import ModelEmaV3

        ema_model = ModelEmaV3(model, decay=0.9)
    sc = torch.amp.GradScaler(device, init_scale=2.0 ** 4) if scaler else None
    return StepParts(model, model, opt, crit, accum=accum, clip_grad=clip, scaler=sc,
                     ema=ema_model)


def _batches(device: str, n: int = 16):
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(2, 3, 32, 32, generator=g).to(device),
             torch.randint(0, 3, (2,), generator=g).to(device)) for _ in range(n)]
    it = iter(data)
    return lambda: next(it)


class HostReads:
    """Counts reads of tensor values onto the host, except of the tensors in ``allowed``
    (host-side counters such as LAMB's step, read on the host by design)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: List[str] = []
        self.allowed: List[torch.Tensor] = []
        for name in READS:
            orig = getattr(torch.Tensor, name)

            def wrapped(t, *a, _orig=orig, _name=name, **kw):
                if not any(t is x for x in self.allowed):
                    self.calls.append(f"{_name} of {tuple(t.shape)} {t.dtype} on {t.device}")
                return _orig(t, *a, **kw)

            monkeypatch.setattr(torch.Tensor, name, wrapped)


def _host_counters(opt: torch.optim.Optimizer) -> List[torch.Tensor]:
    return [g["step"] for g in opt.param_groups if isinstance(g.get("step"), torch.Tensor)]


def _state(parts: StepParts):
    sd = copy.deepcopy(parts.optimizer.state_dict())
    return ({k: v.clone() for k, v in parts.model.state_dict().items()}, sd)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("optimizer, scaler, ema", [
    ("adamw", False, False), ("lamb", False, True), ("sgd", True, False)])
def test_steps_read_nothing_on_the_host(monkeypatch, device, optimizer, scaler, ema):
    parts = _parts(device, optimizer, scaler=scaler, ema=ema)
    batches = _batches(device)
    log = StepLog(torch.device(device), 8)
    train_step(parts, batches)  # the first step creates the optimizer state
    reads = HostReads(monkeypatch)
    reads.allowed += _host_counters(parts.optimizer)
    sync_debug = device == "cuda"
    if sync_debug:
        torch.cuda.set_sync_debug_mode("error")  # any device->host sync raises
    try:
        for step in range(1, 6):
            log.record(step, train_step(parts, batches, ema_step=step, nan_loss=step == 3))
    finally:
        if sync_debug:
            torch.cuda.set_sync_debug_mode("default")
    assert reads.calls == []
    records = log.read()  # the one read, at a log step
    assert reads.calls and len(log) == 0
    assert [(s, c, k) for s, c, k, _, _ in records] == [
        (1, False, False), (2, False, False), (3, True, True), (4, False, False),
        (5, False, False)]


@pytest.mark.parametrize("optimizer", ["adamw", "lamb", "sgd"])
@pytest.mark.parametrize("first", [True, False], ids=["first_step", "later_step"])
def test_a_skipped_step_changes_nothing(optimizer, first):
    parts = _parts("cpu", optimizer, ema=True)
    batches = _batches("cpu")
    if not first:
        train_step(parts, batches)
    weights, opt_state = _state(parts)
    ema_before = copy.deepcopy(parts.ema.module.state_dict())
    out = train_step(parts, batches, nan_loss=True)
    assert bool(out.counted) and bool(out.skipped)
    after_w, after_opt = _state(parts)
    assert same_nested(weights, after_w)
    assert same_nested(ema_before, parts.ema.module.state_dict())
    if first:
        # Only the state's initial values may appear (moments at zero, counts at zero).
        for st in after_opt["state"].values():
            assert all(float(v.abs().sum()) == 0 for v in st.values()
                       if isinstance(v, torch.Tensor)), st
    else:
        assert same_nested(opt_state, after_opt)
    # The next finite step does change the weights, by a finite amount.
    out = train_step(parts, batches)
    assert not bool(out.skipped)
    w2, _ = _state(parts)
    assert not same_nested(weights, w2) and all(torch.isfinite(v).all() for v in w2.values())


@pytest.mark.parametrize("optimizer", ["adamw", "lamb", "sgd"])
def test_a_skipped_first_step_then_a_good_one_equals_only_the_good_one(optimizer):
    """A skipped step leaves no trace: skip + step == step from the same start."""
    a, b = _parts("cpu", optimizer), _parts("cpu", optimizer)
    ba, bb = _batches("cpu"), _batches("cpu")
    train_step(a, ba, nan_loss=True)
    bb(), bb()  # b skips the same two micro-batches without stepping
    train_step(a, ba)
    train_step(b, bb)
    assert same_nested(a.model.state_dict(), b.model.state_dict())


def test_fp16_overflow_is_skipped_but_not_counted():
    parts = _parts("cpu", "adamw", scaler=True, accum=1)
    top = torch.finfo(torch.float32).max
    parts.scaler = torch.amp.GradScaler("cpu", init_scale=top)  # the scaled loss overflows
    weights, _ = _state(parts)
    out = train_step(parts, _batches("cpu"))
    assert bool(out.skipped) and not bool(out.counted)
    assert same_nested(weights, _state(parts)[0])
    assert parts.scaler.get_scale() < top  # the scaler lowered its scale


def test_masked_step_with_a_false_flag_is_a_plain_step():
    for optimizer in ("adamw", "lamb", "sgd"):
        a, b = _parts("cpu", optimizer), _parts("cpu", optimizer)
        for p in (a, b):
            p.model(torch.ones(2, 3, 32, 32)).sum().backward()
        masked_step(a.optimizer, torch.tensor(False))
        b.optimizer.step()
        assert same_nested(a.model.state_dict(), b.model.state_dict()), optimizer


def test_host_step_counters_are_uncounted_when_read():
    from timm.optim import Lamb

    p = nn.Parameter(torch.ones(3))
    opt = Lamb([p])
    p.grad = torch.ones(3)
    for _ in range(5):
        opt.step()
    assert float(opt.param_groups[0]["step"]) == 5
    # Counters on the training device are put back by masked_step; these are not.
    uncount_skipped_steps(opt, 0, torch.device("meta"))
    uncount_skipped_steps(opt, 2, torch.device("cpu"))
    assert float(opt.param_groups[0]["step"]) == 5
    uncount_skipped_steps(opt, 2, torch.device("meta"))
    assert float(opt.param_groups[0]["step"]) == 3


def test_step_log_keeps_order_and_empties():
    log = StepLog(torch.device("cpu"), 3)
    parts = _parts("cpu", "adamw", accum=1)
    batches = _batches("cpu")
    for s in (7, 8, 9):
        log.record(s, train_step(parts, batches, nan_loss=s == 8))
    assert log.full
    got = log.read()
    assert [r[0] for r in got] == [7, 8, 9] and [r[1] for r in got] == [False, True, False]
    assert all(r[3] > 0 for r in (got[0], got[2])) and got[1][3] != got[1][3]  # NaN
    assert log.read() == [] and not log.full



@pytest.mark.slow  # a short training run in-process: ~5 s on 2 cores
def test_the_training_loop_reads_the_device_only_when_it_reads_the_log(tmp_path, monkeypatch):
    """Reads made directly by the loop and the step (mfdsl/runner/train.py, step.py) over a
    6-step run that logs only at its end: none but StepLog.read's, and the reads of the
    checkpoint and validation at the end."""
    import sys

    from conftest import SPECS, run, two_class_folder

    allowed = {"read", "save", "_weights_finite", "validate", "_finish", "_merge_unreadable"}
    direct: List[str] = []
    for name in READS:
        orig = getattr(torch.Tensor, name)

        def wrapped(t, *a, _orig=orig, _name=name, **kw):
            caller = sys._getframe(1)
            while caller.f_code.co_name.startswith("<") and caller.f_back is not None:
                caller = caller.f_back  # a comprehension: the function it is in
            where = caller.f_code.co_filename.replace("\\", "/")
            if (where.endswith(("mfdsl/runner/train.py", "mfdsl/runner/step.py"))
                    and caller.f_code.co_name not in allowed):
                direct.append(f"{_name} in {caller.f_code.co_name} line {caller.f_lineno}")
            return _orig(t, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    data = two_class_folder(tmp_path / "data", 12)
    code, out = run("train", SPECS / "demo_tiny.mf", "--data", data, "-o", tmp_path / "r",
                    "--max-steps", "6", "--epochs", "1", "--warmup-epochs", "0",
                    "--workers", "0", "--no-tensorboard", "--batch-size", "4",
                    "--log-every", "1000")
    assert code == 0, out
    assert sorted(set(direct)) == []


@pytest.mark.parametrize("optimizer", ["lamb", "adamw"])
def test_without_clip_grad_the_step_equals_clipping_at_infinity(optimizer):
    """No clip_grad: the gradient norm is computed without clip_grad_norm_'s pass that
    multiplies every gradient by 1; the norm, weights and state are those of clipping at
    infinity."""
    a, b = _parts("cpu", optimizer, clip=None), _parts("cpu", optimizer, clip=float("inf"))
    for _ in range(3):
        ra = train_step(a, _batches("cpu", 2))
        rb = train_step(b, _batches("cpu", 2))
        assert torch.equal(ra.grad_norm, rb.grad_norm)
    assert same_nested(_state(a), _state(b))
