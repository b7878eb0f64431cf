"""The skewed-process helper: its command and its sweep of libfaketime leftovers."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests import skew


def test_the_sweep_removes_pairs_of_dead_pids_and_keeps_live_and_foreign_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = os.getpid()
    names = [f"sem.faketime_sem_{dead.pid}", f"faketime_shm_{dead.pid}",
             f"sem.faketime_sem_{live}", f"faketime_shm_{live}", "faketime_shm_notapid"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    monkeypatch.setattr(skew, "_SHM", tmp_path)

    assert skew.sweep_leftovers() == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:])


def test_the_prefix_preloads_the_library_with_the_offset_and_a_real_monotonic_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(skew, "_SHM", tmp_path)
    monkeypatch.setattr(skew, "libfaketime", lambda: "/lib/libfaketime.so.1")
    assert skew.faketime_prefix("-1h") == [
        "env", "LD_PRELOAD=/lib/libfaketime.so.1", "FAKETIME=-1h", "FAKETIME_DONT_FAKE_MONOTONIC=1"]


def test_the_prefix_says_what_is_missing_when_libfaketime_is_not_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(skew, "libfaketime", lambda: None)
    with pytest.raises(FileNotFoundError, match="faketime"):
        skew.faketime_prefix("+1h")
