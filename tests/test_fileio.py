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


def test_remove_stale_temps_removes_only_dead_writers_leftovers(tmp_path):
    import subprocess
    import sys

    from lps_keras.fileio import remove_stale_temps, temp_prefix

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale_file = tmp_path / f".last.keras.lpstmp-{dead}-abcd1234.keras"
    stale_file.write_bytes(b"")  # what a kill -9 during a checkpoint write leaves
    stale_dir = tmp_path / f".1.lpstmp-{dead}-x1y2z3"
    (stale_dir / "model").mkdir(parents=True)  # a killed export's staging directory
    live = tmp_path / f"{temp_prefix('state.json')}zz.tmp"  # this process' own: in use
    other = os.getppid()  # a live process other than ours
    live_other = tmp_path / f".x.json.lpstmp-{other}-q.tmp"
    keep = [tmp_path / ".hidden_user_file", tmp_path / "last.keras", live_other, live]
    for p in keep:
        p.write_bytes(b"x")
    removed = remove_stale_temps(tmp_path)
    assert sorted(removed) == sorted([stale_file, stale_dir])
    assert all(p.exists() for p in keep)
    assert remove_stale_temps(tmp_path / "missing") == []


def test_atomic_path_names_its_temporary_file_for_cleanup(tmp_path):
    from lps_keras.fileio import remove_stale_temps

    class Killed(BaseException):
        pass

    seen = []
    with pytest.raises(Killed), atomic_path(tmp_path / "w.weights.h5", suffix=".weights.h5") as tmp:
        seen.append(tmp)
        raise Killed
    assert not os.path.exists(seen[0])  # cleaned on the way out when the process survives
    assert f".w.weights.h5.lpstmp-{os.getpid()}-" in seen[0] and seen[0].endswith(".weights.h5")
    assert remove_stale_temps(tmp_path) == []


# --------------------------------------------------------------------------- DirectoryLock
_HOLD = """
import sys, time
from lps_keras.fileio import DirectoryLock
DirectoryLock(sys.argv[1], "run directory").acquire()
print("held", flush=True)
time.sleep(60)
"""


def _try_lock(directory):
    import subprocess
    import sys

    code = ("import sys\nfrom lps_keras.fileio import DirectoryLock\n"
            "DirectoryLock(sys.argv[1], 'run directory').acquire()")
    return subprocess.run([sys.executable, "-c", code, str(directory)], capture_output=True, text=True, timeout=60)


def test_a_second_process_cannot_take_a_held_directory_and_a_killed_holders_lock_is_taken_over(tmp_path):
    import signal
    import subprocess
    import sys

    from lps_keras.errors import BusyError

    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = _try_lock(tmp_path)
        assert r.returncode != 0 and "BusyError" in r.stderr and f"in use by process {holder.pid}" in r.stderr
    finally:
        holder.send_signal(signal.SIGKILL)  # no clean-up runs: the kernel drops the lock
        holder.wait()
    assert _try_lock(tmp_path).returncode == 0
    from lps_keras.fileio import DirectoryLock

    with DirectoryLock(tmp_path) as lock:
        assert lock.held and (tmp_path / ".lps.lock").read_text().strip() == str(os.getpid())
        with pytest.raises(BusyError, match="in use by process"):
            DirectoryLock(tmp_path).acquire()  # a second open file description in one process is refused too
    assert not lock.held


def test_file_sha256_is_the_content_digest(tmp_path):
    path = tmp_path / "abc.bin"
    path.write_bytes(b"abc")
    from lps_keras.fileio import file_sha256

    # FIPS 180-2's test vector for "abc"
    assert file_sha256(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
