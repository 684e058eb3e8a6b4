"""A model file is read as a state_dict and nothing else: a pickle that would run code when
loaded is refused with the file named, and its code never runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from dropwire.runtime.errors import ModelLoadError
from dropwire.runtime.model import load_model


class RunsCodeWhenUnpickled:
    """Unpickling this calls os.mkdir(marker): proof that the file's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_a_pickle_that_runs_code_is_refused_and_its_code_never_runs(tmp_path: Path, tiny_model: Path) -> None:
    marker = tmp_path / "the-payload-ran"
    evil = tmp_path / "evil.pt"
    # Shaped like a state_dict, with one tensor replaced by the payload.
    state = torch.load(tiny_model, weights_only=True)
    state[next(iter(state))] = RunsCodeWhenUnpickled(marker)
    torch.save(state, evil)
    evil.with_suffix(".json").write_bytes(tiny_model.with_suffix(".json").read_bytes())

    with pytest.raises(ModelLoadError, match=f"model file {evil} is not a readable state_dict"):
        load_model(evil, torch.device("cpu"))
    assert not marker.exists()
    # The genuine file beside it still loads.
    assert load_model(tiny_model, torch.device("cpu")).meta.context_length == 8
