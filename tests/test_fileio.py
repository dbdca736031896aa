import os
import stat

import pytest

from edge_cls._fileio import atomic_directory, atomic_path, write_text_atomic


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
