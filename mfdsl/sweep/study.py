"""The shared study: one Optuna trial per candidate (and per held-out candidate of the
ranking check), enqueued once with fixed parameters; workers take trials from it.

A worker trains a trial only while it holds the trial's claim, ``SWEEP/.claims/<trial>``:
the runner's :class:`~mfdsl.runner.run_lock.RunLock` (flock plus a host/pid record), held
across the training and the tell. A trial left RUNNING by a killed worker has a free claim
and is taken again; its run folder resumes exactly from its last checkpoint (``resume
auto``). The claim, not the run folder's own lock, decides, because the runner releases its
lock before the worker has told the study the result.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from .. import fsio, runs
from ..runner.hooks import Hook
from ..runner.metrics import read_jsonl
from . import results as results_file
from .candidates import Candidate
from .errors import SweepError
from .rungs import Rung, members, rungs
from .schedule import short_recipe

SETTINGS_FILE = "sweep.json"
STUDY_FILE = "study.db"
RUNS_DIR = "runs"
CHECK_DIR = "check"
CLAIMS_DIR = ".claims"
STUDY_NAME = "mfdsl-sweep"
POLL_S = 2.0


@dataclass
class Settings:
    """What a sweep folder was started with; a later start must say the same."""

    candidates: List[str]
    epochs: int
    halving: Optional[int] = None
    check_ranking: int = 0
    check_epochs: Optional[int] = None
    seed: int = 0
    inherit: List[str] = field(default_factory=list)
    data: Optional[str] = None

    def plan(self) -> List[Rung]:
        return rungs(len(self.candidates), self.epochs, self.halving)

    def held_out(self) -> List[str]:
        """The candidates the ranking check trains longer: ``check_ranking`` of them drawn
        with ``seed``, before any result is known."""
        k = min(self.check_ranking, len(self.candidates))
        picked = set(random.Random(self.seed).sample(self.candidates, k))
        return [c for c in self.candidates if c in picked]


def storage_url(sweep: str, storage: Optional[str]) -> str:
    """``--storage`` (an RDB URL, or ``journal:PATH`` for a JournalStorage file), by default
    the SQLite file ``SWEEP/study.db``."""
    return storage or "sqlite:///" + os.path.abspath(os.path.join(sweep, STUDY_FILE))


def open_storage(url: str) -> Any:
    import optuna

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url[len("journal:"):]))
    kw = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kw)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy's errors, bad URLs
        raise SweepError(f"--storage {url}: cannot open the study storage ({exc})") from None


@contextlib.contextmanager
def _setup_lock(sweep: str) -> Iterator[None]:
    import fcntl

    fd = os.open(os.path.join(sweep, ".sweep-setup.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _check_settings(sweep: str, settings: Settings) -> None:
    path = os.path.join(sweep, SETTINGS_FILE)
    mine = asdict(settings)
    if not os.path.exists(path):
        fsio.write_atomic(path, json.dumps(mine, indent=2, sort_keys=True) + "\n")
        return
    with open(path, encoding="utf-8") as f:
        recorded = json.load(f)
    differ = sorted(k for k in mine if recorded.get(k) != mine[k])
    if differ:
        raise SweepError(f"{sweep} is a sweep started with other settings ("
                         + "; ".join(f"{k}: {recorded.get(k)!r} then, {mine[k]!r} now"
                                     for k in differ)
                         + "); continue it with the same options or choose another -o")


def open_study(sweep: str, settings: Settings, storage: Optional[str]) -> Any:
    """The sweep's study, created and filled with its trials by the first worker."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.makedirs(sweep, exist_ok=True)
    with _setup_lock(sweep):
        _check_settings(sweep, settings)
        study = optuna.create_study(study_name=STUDY_NAME,
                                    storage=open_storage(storage_url(sweep, storage)),
                                    direction="maximize", load_if_exists=True)
        if not study.user_attrs.get("enqueued"):
            for phase, names in (("sweep", settings.candidates),
                                 ("check", settings.held_out())):
                for name in names:
                    study.enqueue_trial({"candidate": name},
                                        user_attrs={"candidate": name, "phase": phase})
            study.set_user_attr("enqueued", True)
    return study


class RungReached(Exception):
    """Raised by :class:`StopAt` to end a run at a rung's last epoch."""


class StopAt(Hook):
    """End the run after ``epochs`` complete epochs (after their validation and checkpoint,
    the run's own hooks acting first); a run resumed there stops before any step."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def epoch_start(self, epoch: int) -> None:
        if epoch >= self.epochs:
            raise RungReached()

    def epoch_end(self, end: Any) -> None:
        if end.complete and end.epoch + 1 >= self.epochs:
            raise RungReached()


def val_top1_at(folder: str, epochs: int) -> float:
    """The top-1 validated after ``epochs`` complete epochs (metrics.jsonl)."""
    found = None
    for rec in read_jsonl(os.path.join(folder, runs.METRICS_FILE)):
        if rec.get("kind") == "val" and rec.get("epoch") == epochs:
            found = float(rec["top1"])
    if found is None:
        raise SweepError(f"{folder}: no validation after epoch {epochs} in metrics.jsonl")
    return found


def _summary(folder: str) -> Optional[Dict[str, Any]]:
    try:
        with open(os.path.join(folder, runs.SUMMARY_FILE), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


class Worker:
    """One worker: takes trials from the study until none is left to train."""

    def __init__(self, sweep: str, settings: Settings, cands: Sequence[Candidate], study: Any,
                 train_kw: Dict[str, Any], log: Callable[[str], None] = print,
                 poll_s: float = POLL_S) -> None:
        self.sweep, self.settings, self.study = sweep, settings, study
        self.cands = {c.name: c for c in cands}
        self.order = list(settings.candidates)
        self.plan = settings.plan()
        self.train_kw, self.log, self.poll_s = train_kw, log, poll_s

    # ----------------------------------------------------------------- choosing work
    def _results(self, trials: Sequence[Any]) -> Dict[str, List[float]]:
        return {t.user_attrs["candidate"]: list(t.user_attrs.get("rung_top1", []))
                for t in trials if t.user_attrs.get("phase") == "sweep"}

    def action(self, t: Any, trials: Sequence[Any]) -> Optional[Tuple[str, int]]:
        """What trial ``t`` needs next: ("train", rung), ("check", 0), ("prune", r),
        ("finish", r); None while its rung waits for other candidates."""
        if t.user_attrs.get("phase") == "check":
            return ("check", 0)
        res = self._results(trials)
        name = t.user_attrs["candidate"]
        r = len(res.get(name, []))
        if r >= len(self.plan):
            return ("finish", r)
        m = members(self.order, res, self.plan, r)
        if m is None:
            return None
        return ("train", r) if name in m else ("prune", r)

    def run(self) -> None:
        """Work until every trial is finished; other workers' trials are waited for."""
        while True:
            trials = self._trials()
            pending = [t for t in trials if not t.state.is_finished()]
            if not pending:
                return
            if not any(self._try(t) for t in pending):
                time.sleep(self.poll_s)

    def _trials(self) -> List[Any]:
        return sorted(self.study.get_trials(deepcopy=False),
                      key=lambda t: (t.user_attrs.get("phase") != "sweep", t.number))

    def _try(self, t: Any) -> bool:
        from ..runner.run_lock import RunLock, RunLocked

        if self.action(t, self._trials()) is None:
            return False
        phase, name = t.user_attrs["phase"], t.user_attrs["candidate"]
        claim = RunLock(os.path.join(self.sweep, CLAIMS_DIR, f"{phase}-{name}"))
        try:
            claim.acquire("mfdsl sweep")
        except RunLocked:
            return False
        try:
            trials = self._trials()
            t = next(x for x in trials if x.number == t.number)
            act = None if t.state.is_finished() else self.action(t, trials)
            if act is None:
                return False
            from optuna.trial import TrialState

            storage = self.study._storage
            if t.state == TrialState.WAITING:
                storage.set_trial_state_values(t._trial_id, TrialState.RUNNING)
            self._do(t, act)
        finally:
            claim.release()
        self.write_results()
        return True

    # ----------------------------------------------------------------- doing it
    def _do(self, t: Any, act: Tuple[str, int]) -> None:
        import optuna
        from optuna.trial import TrialState

        from ..errors import UserError

        kind, r = act
        name = t.user_attrs["candidate"]
        trial = optuna.Trial(self.study, t._trial_id)
        done = list(t.user_attrs.get("rung_top1", []))
        if kind == "prune":
            self.log(f"sweep: {name} stops after {self.plan[r - 1].epochs} epochs "
                     f"(rung {r} keeps {self.plan[r].keep})")
            self.study.tell(trial, state=TrialState.PRUNED)
            return
        if kind == "finish":
            self.study.tell(trial, done[-1])
            return
        if kind == "check":
            epochs, total, folder = self.settings.check_epochs, self.settings.check_epochs, \
                os.path.join(self.sweep, CHECK_DIR, name)
        else:
            epochs, total = self.plan[r].epochs, self.plan[-1].epochs
            folder = os.path.join(self.sweep, RUNS_DIR, name)
        self.log(f"sweep: training {name} ({kind}) to epoch {epochs} of {total} in {folder}")
        t0 = time.perf_counter()
        try:
            top1 = self.train(name, folder, epochs, total)
        except UserError as exc:
            if getattr(exc, "exit_code", 2) in (75, 130):  # preempted, interrupted: resume
                raise
            self.log(f"sweep: {name} failed: {exc}")
            trial.set_user_attr("error", str(exc))
            self.study.tell(trial, state=TrialState.FAIL)
            return
        trial.set_user_attr("seconds", t.user_attrs.get("seconds", 0.0)
                            + time.perf_counter() - t0)
        if kind == "check":
            trial.set_user_attr("epochs", epochs)
            self.study.tell(trial, top1)
            return
        trial.report(top1, step=epochs)
        trial.set_user_attr("rung_top1", done + [top1])
        if r == len(self.plan) - 1:
            self.study.tell(trial, top1)

    def train(self, name: str, folder: str, epochs: int, total: int) -> float:
        """Train candidate ``name`` in ``folder`` on the ``total``-epoch short schedule up to
        epoch ``epochs``; its top-1 there."""
        from ..runner import api

        c = self.cands[name]
        summary = _summary(folder)
        if summary is None or summary.get("final_val") is None:
            spec = api.load(c.file)
            overrides = short_recipe(spec.recipe, total)
            hooks = [StopAt(epochs)] if epochs < total else []
            try:
                summary = api.train(spec, output=folder, resume="auto", recipe=overrides,
                                    inherit=tuple(self.settings.inherit), hooks=hooks,
                                    **self.train_kw)
            except RungReached:
                return val_top1_at(folder, epochs)
        if epochs < total:  # the run was complete already (an earlier, longer rung)
            return val_top1_at(folder, epochs)
        return float(summary["final_val"]["top1"])

    # ----------------------------------------------------------------- results
    def write_results(self) -> None:
        results_file.write(self.sweep, asdict(self.settings), result_rows(
            self.order, self.cands, self._trials(), self.plan))


def result_rows(order: Sequence[str], cands: Dict[str, Candidate], trials: Sequence[Any],
                plan: Sequence[Rung]) -> List[Dict[str, Any]]:
    """One row per candidate, in candidate order."""
    by = {(t.user_attrs.get("phase"), t.user_attrs.get("candidate")): t for t in trials}
    rows = []
    for name in order:
        c, t, chk = cands[name], by.get(("sweep", name)), by.get(("check", name))
        done = list(t.user_attrs.get("rung_top1", [])) if t is not None else []
        rows.append({
            "candidate": name, "fingerprint": c.fingerprint, "choices": c.choices,
            "params": c.params, "macs": c.macs,
            "top1": done[-1] if done else None,
            "epochs": plan[len(done) - 1].epochs if done else None,
            "seconds": t.user_attrs.get("seconds") if t is not None else None,
            "status": t.state.name.lower() if t is not None else None,
            "rung_top1": done,
            "check_top1": chk.value if chk is not None and chk.state.name == "COMPLETE"
            else None,
            "check_epochs": chk.user_attrs.get("epochs") if chk is not None else None,
        })
    return rows
