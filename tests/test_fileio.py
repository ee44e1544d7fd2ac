import os
import stat

import pytest

from lps_keras.fileio import atomic_path, atomic_write_text, publish_tree


def _mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


def test_atomic_write_publishes_with_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        p = atomic_write_text(tmp_path / "sub" / "a.json", "{}")
        assert p.read_text() == "{}" and _mode(p) == 0o644  # not tempfile's 0600
    finally:
        os.umask(old)


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "b.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["b.txt"]


def test_publish_tree(tmp_path):
    import tempfile

    old = os.umask(0o022)
    try:
        d = tempfile.mkdtemp(dir=tmp_path)
        os.makedirs(os.path.join(d, "x"))
        f = os.path.join(d, "x", "f")
        open(f, "w").close()
        os.chmod(f, 0o600)
        publish_tree(d)
        assert _mode(d) == 0o755 and _mode(os.path.join(d, "x")) == 0o755 and _mode(f) == 0o644
    finally:
        os.umask(old)
