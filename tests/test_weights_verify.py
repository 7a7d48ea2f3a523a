"""Issue 19: released weights are verified by content whatever the cache layout."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from pathlib import Path

import pytest

from mfdsl.weights import hub as hubmod
from mfdsl.weights.hub import WeightsError, fetch, verify_file
from mfdsl.weights.releases import lookup

from conftest import put_in_cache

NAME = "poolformerv2_s12.sail_in1k"
DATA = bytes(range(256)) * 64


def _copied_cache(hub: Path) -> Path:
    """The layout `cp -rL` leaves: the snapshot is a regular file (a copy of the blob)."""
    rel = lookup(NAME)
    put_in_cache(hub, rel.repo_id, rel.filename, DATA)
    snap = next((hub / "hub").rglob(f"snapshots/*/{rel.filename}"))
    target = snap.resolve()
    snap.unlink()
    shutil.copyfile(target, snap)
    assert not snap.is_symlink()
    return snap


def _flip(p: Path) -> None:
    raw = bytearray(p.read_bytes())
    raw[-1] ^= 0xFF
    p.write_bytes(bytes(raw))


def test_a_plain_file_cache_is_verified_against_its_blobs(hub: Path) -> None:
    snap = _copied_cache(hub)
    assert fetch(NAME) == str(snap)
    _flip(snap)
    with pytest.raises(WeightsError, match=r"corrupt: its sha256 is [0-9a-f]{64}, the hub's "
                                           r"objects of that size in the cache are"):
        fetch(NAME)


def test_a_plain_file_without_blobs_uses_the_hubs_etag_online(hub: Path, monkeypatch,
                                                              capsys) -> None:
    snap = _copied_cache(hub)
    for b in (snap.parents[2] / "blobs").iterdir():
        b.unlink()
    good = hashlib.sha256(DATA).hexdigest()
    monkeypatch.setattr(hubmod, "_hub_etag", lambda release: good)
    rel = lookup(NAME)
    assert verify_file(str(snap), rel, offline=False) == good
    _flip(snap)
    with pytest.raises(WeightsError, match=f"the hub says {good}"):
        verify_file(str(snap), rel, offline=False)
    # Offline with nothing to compare with: used, but not without a word.
    verify_file(str(snap), rel, offline=True)
    assert "could not be checked against the hub" in capsys.readouterr().err


def test_a_pinned_digest_is_checked_whatever_the_layout(hub: Path) -> None:
    rel = lookup(NAME)
    blob = put_in_cache(hub, rel.repo_id, rel.filename, DATA)
    snap = next((hub / "hub").rglob(f"snapshots/*/{rel.filename}"))
    pinned = dataclasses.replace(rel, sha256=hashlib.sha256(DATA).hexdigest())
    assert verify_file(str(snap), pinned) == pinned.sha256
    wrong = dataclasses.replace(rel, sha256="0" * 64)
    with pytest.raises(WeightsError, match="the pinned sha256 of the release is 0000"):
        verify_file(str(snap), wrong)
    assert os.path.isfile(blob)
