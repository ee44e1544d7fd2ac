import errno

import pytest

from lps_keras.cli import describe_error, guarded
from lps_keras.errors import (
    BusyError,
    DiskFullError,
    LPSError,
    PathNameError,
    check_path_name,
    is_disk_full,
)


def _every_error_class():
    from lps_keras.arch import ArchError
    from lps_keras.data.common import DataError, MissingDataError
    from lps_keras.evaluation import EvaluationError
    from lps_keras.export.common import BackendUnavailable, ExportError
    from lps_keras.latency import LatencyCacheMiss, LatencyError
    from lps_keras.official import OfficialWeightsError
    from lps_keras.recipe import RecipeError
    from lps_keras.search import JournalError, SearchError
    from lps_keras.search.executors import ExecutorError
    from lps_keras.train import NonFiniteLossError, TrainingError
    from lps_keras.weights import WeightsError

    return [ArchError, DataError, MissingDataError, EvaluationError, ExportError, BackendUnavailable, LatencyError,
            LatencyCacheMiss, OfficialWeightsError, RecipeError, JournalError, SearchError, ExecutorError,
            TrainingError, NonFiniteLossError, WeightsError]


@pytest.mark.parametrize("cls", _every_error_class(), ids=lambda c: c.__name__)
def test_every_modules_user_error_derives_from_the_one_base(cls):
    assert issubclass(cls, LPSError)


def test_exit_codes_come_from_the_error_kind(capsys):
    from lps_keras.train import NonFiniteLossError, TrainingError

    def raising(e):
        def fn():
            raise e
        return fn

    assert guarded("p", raising(TrainingError("bad setup"))) == 2
    assert capsys.readouterr().err == "p: error: bad setup\n"
    assert guarded("p", raising(NonFiniteLossError("loss is nan at step 7"))) == 3
    assert capsys.readouterr().err == "p: training stopped: loss is nan at step 7\n"
    assert guarded("p", raising(KeyboardInterrupt())) == 130
    # a plain ValueError is a defect of ours: its traceback stays (exit 1 from Python)
    with pytest.raises(ValueError):
        guarded("p", raising(ValueError("internal")))


def test_a_full_disk_is_one_line_naming_the_path():
    e = OSError(errno.ENOSPC, "No space left on device", "/runs/x/best.keras")
    assert describe_error(e) == ("/runs/x/best.keras: the disk is full (no space left on device); "
                                 "nothing half-written was kept", 2)
    # h5py wraps ENOSPC in an OSError without errno; TensorFlow in a ResourceExhaustedError
    h5 = OSError("Unable to synchronously create file (file write failed: time = Mon, filename = '/r/a.h5', "
                 "errno = 28, error message = 'No space left on device')")
    assert is_disk_full(h5) and describe_error(h5)[0].startswith("/r/a.h5: the disk is full")
    assert str(DiskFullError("/x")) == "/x: the disk is full (no space left on device)"
    # Sent back from a worker process (pickled), it is the same one line.
    import pickle

    again = pickle.loads(pickle.dumps(DiskFullError("/x", "kept the last backup")))
    assert str(again) == "/x: the disk is full (no space left on device); kept the last backup" and again.path == "/x"
    assert not is_disk_full(OSError(errno.ENOENT, "No such file or directory", "a"))


def test_memory_errors_are_one_line():
    message, code = describe_error(MemoryError("Unable to allocate 3.0 GiB"))
    assert code == 2 and "out of memory" in message and "3.0 GiB" in message


@pytest.mark.parametrize("name", ["camvid", "lps_s-v2", "run 1", "a.b"])
def test_plain_names_pass(name):
    assert check_path_name("export.name", name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "../../x", "a/b", "a\\b", ".hidden", "a\x00b", "x" * 201])
def test_path_names_with_separators_or_dots_are_refused_naming_the_field(name):
    with pytest.raises(PathNameError, match="export.name"):
        check_path_name("export.name", name)


def test_busy_error_is_a_user_error():
    assert describe_error(BusyError("runs/x: in use by process 12"))[1] == 2
