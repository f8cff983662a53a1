"""SafeCheckpointer: atomic saves (also under SIGKILL), resume fallback over corrupt checkpoints,
refusal to start from scratch, checked weight loading."""

import errno
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from run_helpers import ROOT
from torch import nn

from nrd_rsp.checkpoint import CheckpointError, CheckpointMismatchError, SafeCheckpointer
from nrd_rsp.errors import DiskFullError, exit_code, one_line


class Net(nn.Module):
    def __init__(self, width=4, extra=False):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3)
        self.head = nn.Linear(width, 2)
        if extra:
            self.other = nn.Linear(2, 2)


class Counter:
    """A checkpointable with state, like the trainer."""

    def __init__(self):
        self.iteration = -1

    def state_dict(self):
        return {"iteration": self.iteration}

    def load_state_dict(self, sd):
        self.iteration = sd["iteration"]


def _save(tmp_path, iteration, name=None, seed=None):
    torch.manual_seed(iteration if seed is None else seed)
    model, counter = Net(), Counter()
    counter.iteration = iteration
    SafeCheckpointer(model, str(tmp_path), trainer=counter).save(name or f"model_{iteration:07d}")
    return model


def _fresh(tmp_path):
    model, counter = Net(), Counter()
    return model, counter, SafeCheckpointer(model, str(tmp_path), trainer=counter)


def _same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def _tag(tmp_path):
    return (tmp_path / "last_checkpoint").read_text()


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    _save(tmp_path, 1)
    before = (tmp_path / "model_0000001.pth").read_bytes()

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # e.g. Ctrl-C or a kill while torch.save writes

    monkeypatch.setattr(torch, "save", broken_save)
    model, counter, ckpt = _fresh(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_0000003")
    assert _tag(tmp_path) == "model_0000001.pth"
    assert not (tmp_path / "model_0000003.pth").exists()
    assert (tmp_path / "model_0000001.pth").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == [
        "last_checkpoint",
        "model_0000001.pth",
    ]  # temporary removed


def test_full_disk_is_one_error_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    _save(tmp_path, 1)
    before = (tmp_path / "model_0000001.pth").read_bytes()

    def full_disk_save(obj, f):  # what torch.save does on ENOSPC: a RuntimeError from the OSError
        f.write(b"part of a checkpoint")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")

    monkeypatch.setattr(torch, "save", full_disk_save)
    model, counter, ckpt = _fresh(tmp_path)
    with pytest.raises(DiskFullError) as info:
        ckpt.save("model_0000003")
    message = one_line(info.value)
    assert "No space left" in message and "model_0000003.pth" in message
    assert "OUTPUT_DIR" in message and exit_code(info.value) == 1
    assert (tmp_path / "model_0000001.pth").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]


def test_other_write_errors_are_not_reported_as_a_full_disk(tmp_path, monkeypatch):
    def denied(obj, f):
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(torch, "save", denied)
    with pytest.raises(OSError) as info:
        _fresh(tmp_path)[2].save("model_0000003")
    assert not isinstance(info.value, DiskFullError)


def test_sigkill_during_save_keeps_previous_checkpoint(tmp_path):
    # A real SIGKILL in the middle of torch.save: no Python cleanup runs.
    script = textwrap.dedent(f"""
        import os, signal, torch
        from nrd_rsp.checkpoint import SafeCheckpointer
        ckpt = SafeCheckpointer(torch.nn.Linear(2, 2), {str(tmp_path)!r})
        ckpt.save("model_0000001")
        real_save = torch.save
        def dying_save(obj, f):
            f.write(b"x" * 1000)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = dying_save
        ckpt.save("model_0000003")
    """)
    r = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    files = sorted(os.listdir(tmp_path))
    assert "model_0000003.pth" not in files and _tag(tmp_path) == "model_0000001.pth"
    leftovers = [f for f in files if f.startswith(".model_0000003.pth.")]
    assert len(leftovers) == 1  # the half-written temporary, hidden from checkpoint listings
    ckpt = SafeCheckpointer(nn.Linear(2, 2), str(tmp_path))
    ckpt.resume_or_load("", resume=True)
    assert ckpt.resumed_from.endswith("model_0000001.pth")
    assert not any(f.startswith(".model_") for f in os.listdir(tmp_path))  # cleaned at resume


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "delete"])
def test_resume_falls_back_from_a_corrupt_last_checkpoint(tmp_path, damage, caplog):
    _save(tmp_path, 1)
    good = _save(tmp_path, 3)
    _save(tmp_path, 5)
    path = tmp_path / "model_0000005.pth"
    assert _tag(tmp_path) == "model_0000005.pth"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(4096))
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.unlink()
    model, counter, ckpt = _fresh(tmp_path)
    ckpt.resume_or_load("", resume=True)
    assert ckpt.resumed_from == str(tmp_path / "model_0000003.pth")
    assert counter.iteration == 3 and _same_weights(model, good)
    assert "model_0000005.pth" in caplog.text  # the broken file is named


def test_resume_order_numbered_by_iteration_then_others(tmp_path):
    _save(tmp_path, 3)
    _save(tmp_path, 20)
    _save(tmp_path, 7, name="model_final")
    (tmp_path / "last_checkpoint").unlink()  # e.g. killed between the rename and the tag
    ckpt = _fresh(tmp_path)[2]
    names = [os.path.basename(p) for p in ckpt.resume_candidates()]
    assert names == ["model_0000020.pth", "model_0000003.pth", "model_final.pth"]
    ckpt.resume_or_load("", resume=True)
    assert ckpt.resumed_from.endswith("model_0000020.pth")


def test_resume_stops_when_no_checkpoint_is_readable(tmp_path):
    for it in (1, 3):
        _save(tmp_path, it)
        (tmp_path / f"model_{it:07d}.pth").write_bytes(b"not a checkpoint")
    model, counter, ckpt = _fresh(tmp_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="no readable checkpoint") as e:
        ckpt.resume_or_load("", resume=True)
    assert "model_0000003.pth" in str(e.value) and "model_0000001.pth" in str(e.value)
    assert "Refusing to start from scratch" in str(e.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_resume_without_any_checkpoint_starts_from_weights(tmp_path):
    ckpt = _fresh(tmp_path)[2]
    assert ckpt.resume_or_load("", resume=True) == {}
    assert ckpt.resumed_from is None


def test_strict_load_rejects_another_architecture_with_a_table(tmp_path):
    torch.save({"model": Net(width=8).state_dict()}, tmp_path / "other.pth")
    model = Net(width=4, extra=True)
    with pytest.raises(CheckpointMismatchError) as e:
        SafeCheckpointer(model).resume_or_load(
            str(tmp_path / "other.pth"), resume=False, strict=True
        )
    msg, table = str(e.value), e.value.table
    assert (
        "other.pth" in msg
        and "2 of the model's 6 tensors are missing" in msg
        and "3 have another shape" in msg
    )
    lines = table.splitlines()
    assert lines[0].split() == ["problem", "key", "checkpoint", "model"]
    assert any(line.split()[:2] == ["missing", "other.weight"] for line in lines)
    assert any(
        line.startswith("shape")
        and "conv.weight" in line
        and "(8, 3, 3, 3)" in line
        and "(4, 3, 3, 3)" in line
        for line in lines
    )


def test_training_load_accepts_partial_match_but_not_zero_match(tmp_path):
    src = Net(width=4)
    torch.save({"model": src.state_dict()}, tmp_path / "partial.pth")
    model = Net(width=4, extra=True)
    SafeCheckpointer(model).resume_or_load(
        str(tmp_path / "partial.pth"), resume=False
    )  # warnings only
    assert torch.equal(model.conv.weight, src.conv.weight)
    torch.save(
        {"model": {"foo.weight": torch.zeros(3), "bar.bias": torch.zeros(2)}},
        tmp_path / "alien.pth",
    )
    with pytest.raises(CheckpointMismatchError, match="none of its 2 tensors fits"):
        SafeCheckpointer(Net()).resume_or_load(str(tmp_path / "alien.pth"), resume=False)


def test_resume_requires_every_model_tensor(tmp_path):
    torch.manual_seed(0)
    SafeCheckpointer(Net(), str(tmp_path), trainer=Counter()).save("model_0000001")
    model = Net(extra=True)
    with pytest.raises(CheckpointMismatchError, match="2 of the model's 6 tensors are missing"):
        SafeCheckpointer(model, str(tmp_path), trainer=Counter()).resume_or_load("", resume=True)
