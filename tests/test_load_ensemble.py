"""Loading an ensemble whose members cannot be combined: a one-line RunError, and every member loaded so far closed
(their inference threads stopped). Stub members stand for loaded runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmsent import predict
from mmsent.runfolder import RunError
from mmsent.stacking import Stacker


class StubMember:
    def __init__(self, classes):
        self.classes, self.closed, self.temperature = classes, False, 1.5

    def close(self):
        self.closed = True


def _load(monkeypatch, classes: list[tuple], stacker: dict | None):
    members = [StubMember(c) for c in classes]
    loaded = iter(members)
    monkeypatch.setattr(predict, "member_dirs", lambda run_dir: [Path(f"m{i}") for i in range(len(members))])
    monkeypatch.setattr(predict, "load_run_folder", lambda *args: next(loaded))
    monkeypatch.setattr(predict, "read_stacker_dict", lambda run_dir: stacker)
    monkeypatch.setattr(predict, "read_temperature", lambda run_dir: 1.0)
    return members, lambda: predict._load_ensemble(Path("ens"), "cpu", None)


def _stacker(classes: int, inputs: int) -> dict:
    return Stacker(np.zeros((classes, inputs)), np.zeros(classes), 1.0).to_dict()


TWO = ("neg", "pos")


@pytest.mark.parametrize("classes, stacker, message", [
    ([TWO, ("a", "b", "c")], None, "predict different classes"),
    ([TWO, TWO], {"weights": "?"}, "its stacker cannot be used"),
    ([TWO, TWO], _stacker(3, 2 * 3 + 4), r"need \(2, 8\)"),  # a three-class stacker for two-class members
    ([TWO, TWO], _stacker(2, 3 * 2 + 4), r"need \(2, 8\)"),  # a stacker of three members
])
def test_members_are_closed_when_they_cannot_be_combined(monkeypatch, classes, stacker, message):
    members, load = _load(monkeypatch, classes, stacker)
    with pytest.raises(RunError, match=message):
        load()
    assert all(member.closed for member in members)


def test_a_matching_stacker_loads(monkeypatch):
    members, load = _load(monkeypatch, [TWO, TWO], _stacker(2, 2 * 2 + 4))
    ensemble = load()
    assert ensemble.stacker.weights.shape == (2, 8) and ensemble.members == members
    assert not any(member.closed for member in members) and all(m.temperature == 1.0 for m in members)
