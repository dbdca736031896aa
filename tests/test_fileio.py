import errno
import os
import stat

import pytest

from edge_cls._fileio import (
    DiskFullError,
    NotOursError,
    atomic_directory,
    atomic_path,
    write_bytes_atomic,
    write_text_atomic,
)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_files_get_normal_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
        with atomic_directory(tmp_path / "d") as staging:
            (staging / "f").write_text("y")
    finally:
        os.umask(umask)
    assert mode(tmp_path / "a.txt") == 0o644 and mode(tmp_path / "d") == 0o755


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_directory_replaced_whole_or_not_at_all(tmp_path):
    target = tmp_path / "artifact"
    with atomic_directory(target) as staging:
        (staging / "v").write_text("1")
    with pytest.raises(RuntimeError), atomic_directory(target) as staging:
        (staging / "v").write_text("2")
        raise RuntimeError("export failed")
    assert (target / "v").read_text() == "1"
    with atomic_directory(target) as staging:
        (staging / "v").write_text("3")
    assert (target / "v").read_text() == "3" and sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]


def test_failed_swap_puts_the_old_directory_back(tmp_path, monkeypatch):
    target = tmp_path / "artifact"
    with atomic_directory(target) as staging:
        (staging / "v").write_text("1")
    real_replace = os.replace

    def replace(src, dst):
        if str(src).endswith(".staging"):
            raise OSError("rename failed")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError), atomic_directory(target) as staging:
        (staging / "v").write_text("2")
    assert (target / "v").read_text() == "1"


def _spy_on_disk_calls(monkeypatch):
    """Record fsync and rename calls in order (the real calls still run)."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def test_a_file_is_flushed_to_disk_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    events = _spy_on_disk_calls(monkeypatch)
    write_text_atomic(tmp_path / "manifest.json", "{}")
    kinds = [kind for kind, _ in events]
    assert kinds == ["fsync", "replace", "fsync"], events
    assert events[0][1].endswith(".tmp") and events[1][1] == str(tmp_path / "manifest.json")
    assert events[2][1] == str(tmp_path)


def test_a_directory_is_flushed_to_disk_before_it_replaces_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "artifact"
    with atomic_directory(target) as staging:
        (staging / "v").write_text("1")
    events = _spy_on_disk_calls(monkeypatch)
    with atomic_directory(target) as staging:
        (staging / "sub").mkdir()
        (staging / "sub" / "model.bin").write_text("2")
    first_replace = next(i for i, (kind, _) in enumerate(events) if kind == "replace")
    flushed = {path for kind, path in events[:first_replace] if kind == "fsync"}
    assert any(p.endswith("/sub/model.bin") for p in flushed) and any(p.endswith("/sub") for p in flushed)
    assert events[-1] == ("fsync", str(tmp_path))


def test_a_full_disk_while_flushing_keeps_the_old_file(tmp_path, monkeypatch):
    """ENOSPC can surface at fsync (delayed allocation): the old file must survive it."""
    target = tmp_path / "last.pt"
    target.write_bytes(b"good state")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(DiskFullError, match=r"no space left on the device while writing .*last\.pt.* unchanged"):
        write_bytes_atomic(target, b"new state that did not fit")
    assert target.read_bytes() == b"good state" and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_full_disk_leaves_the_old_file_and_directory_usable(small_disk):
    target = small_disk / "manifest.json"
    write_text_atomic(target, "old")
    with pytest.raises(DiskFullError) as caught:
        write_bytes_atomic(target, b"x" * 400_000)
    assert caught.value.errno == errno.ENOSPC and target.read_text() == "old"
    artifact = small_disk / "artifact"
    with atomic_directory(artifact) as staging:
        (staging / "model.bin").write_bytes(b"v1")
    with pytest.raises(DiskFullError) as caught, atomic_directory(artifact) as staging:
        (staging / "model.bin").write_bytes(b"v2" * 200_000)
    assert caught.value.errno == errno.ENOSPC and (artifact / "model.bin").read_bytes() == b"v1"
    assert sorted(p.name for p in small_disk.iterdir()) == ["artifact", "manifest.json"]  # no leftovers


def test_a_directory_edge_cls_did_not_make_is_never_replaced(tmp_path):
    target = tmp_path / "data"
    target.mkdir()
    (target / "holiday.jpg").write_bytes(b"irreplaceable")
    with pytest.raises(NotOursError, match="edge-cls did not make it"), atomic_directory(target, marker=".complete"):
        pass
    assert (target / "holiday.jpg").read_bytes() == b"irreplaceable"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    mine = tmp_path / "file"
    mine.write_text("mine")
    with pytest.raises(NotOursError, match="not a directory edge-cls made"), atomic_directory(mine, marker=".x"):
        pass
    assert mine.read_text() == "mine"


def test_a_foreign_directory_that_appears_while_working_is_kept(tmp_path):
    target = tmp_path / "data"
    with pytest.raises(NotOursError), atomic_directory(target, marker=".complete") as staging:
        (staging / ".complete").write_text("")
        target.mkdir()
        (target / "theirs.txt").write_text("theirs")
    assert (target / "theirs.txt").read_text() == "theirs" and sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_empty_or_marked_directories_are_replaced(tmp_path):
    target = tmp_path / "data"
    target.mkdir()
    for _ in range(2):  # empty, then holding the marker
        with atomic_directory(target, marker=".complete") as staging:
            (staging / ".complete").write_text("done")
    assert sorted(p.name for p in target.iterdir()) == [".complete"]
