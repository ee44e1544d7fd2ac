"""Executors: the same search decisions in process, in a process pool and on Ray; retry, failure, resume, placement.

The Ray tests share one local two-node cluster (``ray.cluster_utils.Cluster``): a head with 2 CPUs
for the candidates and a CPU-less device node offering the custom resource ``lpsdev``. Stand-ins
replace proxy training and latency measurement (pure functions of the arch), so the decisions of
two runs can be compared exactly.
"""

import concurrent.futures
import dataclasses
import functools
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lps_keras.arch import Arch
from lps_keras.latency import LatencyStats, device_name
from lps_keras.recipe import load_recipe
from lps_keras.search import SearchJournal, run_expansion
from lps_keras.search.executors import (
    CandidateFailed,
    ExecutorError,
    PoolExecutor,
    SequentialExecutor,
    import_ray,
    make_executor,
    split_cpus,
)
from lps_keras.search.expansion import run

REPO = Path(__file__).resolve().parents[1]
START = Arch((1, 1, 1, 1, 1), (4, 8, 16, 32, 32), (0.5, 0, 0))
QUIET = None


# --------------------------------------------------------------------------- stand-ins (module level: picklable)
def macs_latency(arch):
    """Latency stand-in: MMACs at 64x128, strictly growing with every op."""
    return arch.macs(64, 128) / 1e6


def concave_score(arch, ctx=None):
    """Accuracy stand-in with diminishing returns in every dimension."""
    return sum(d ** 0.5 for d in arch.depth) + sum(w ** 0.25 for w in arch.width) + 3 * sum(arch.resolution)


@dataclasses.dataclass(frozen=True)
class Scorer:
    """``concave_score`` that logs each call (pid, start, end) to ``log``, sleeps, and can fail for one op."""

    log: str
    sleep: float = 0.0
    fail_op: str = ""

    def __call__(self, arch, ctx):
        t0 = time.time()
        time.sleep(self.sleep)
        with open(self.log, "a") as f:
            f.write(json.dumps({"hash": arch.hash, "op": ctx.op, "start": t0, "end": time.time()}) + "\n")
        if ctx.op == self.fail_op:
            raise ValueError(f"no memory for {ctx.op}")
        return {"score": concave_score(arch)}


def read_log(path):
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def decisions(history):
    return [(s.arch, s.op, s.k, s.score, tuple((c.op, c.score, c.rank) for c in s.candidates)) for s in history]


def tiny_recipe(tmp_path, steps=1):
    return load_recipe(REPO / "recipes/expand_synthetic.json", [
        f"data.root={tmp_path / 'synthetic'}", f"search.steps={steps}", "search.max_k=2",
        "search.latency_input_shape=[1, 64, 128, 3]",
    ])


def reference(steps):
    """The decisions of an in-memory, in-process run (no executor at all)."""
    return run_expansion(START, macs_latency, concave_score, steps, max_k=2, progress=QUIET)


# --------------------------------------------------------------------------- without Ray
def test_sequential_executor_retries_once_then_reports_the_error(tmp_path):
    calls = []

    def flaky(x):
        calls.append(x)
        if len(calls) == 1:
            raise OSError("transient")
        return 2 * x

    with SequentialExecutor() as ex:
        assert ex.submit(flaky, 21).result() == 42 and calls == [21, 21]
        fut = ex.submit(Scorer(str(tmp_path / "log"), fail_op="w3"), START, _ctx("w3"))
        with pytest.raises(CandidateFailed, match=r"ValueError: no memory for w3 \(failed 2 times\)"):
            fut.result()
    assert len(read_log(tmp_path / "log")) == 2  # the first attempt and its one retry


def _conflict(x):
    from lps_keras.train.errors import RunConflictError

    raise RunConflictError(f"run directory of {x} holds another run")


def test_a_permanent_error_is_neither_retried_nor_recorded_as_a_failed_candidate():
    from lps_keras.errors import PermanentError

    calls = []

    def conflict(x):
        calls.append(x)
        raise PermanentError(f"run directory of {x} holds another run")

    with SequentialExecutor() as ex:
        with pytest.raises(PermanentError, match="holds another run") as info:
            ex.submit(conflict, "w3").result()
    assert calls == ["w3"] and not isinstance(info.value, CandidateFailed)
    with PoolExecutor(1) as ex:  # pickled back from a worker process, still itself
        with pytest.raises(PermanentError, match="of w4 holds another run"):
            ex.submit(_conflict, "w4").result()


class Kill(KeyboardInterrupt):
    pass


def test_sequential_executor_stops_at_an_interrupt_and_keeps_finished_results():
    ran = []

    def work(i):
        ran.append(i)
        if i == 1:
            raise Kill()
        return i

    with SequentialExecutor() as ex:
        futures = [ex.submit(work, i) for i in range(4)]
        assert futures[0].result() == 0
        with pytest.raises(Kill):
            futures[1].result()
        assert all(f.cancelled() for f in futures[2:]) and ran == [0, 1]  # an interrupt is not retried
        done = list(concurrent.futures.as_completed(futures, timeout=10))  # cancelled ones are reported too
        assert len(done) == 4


def _ctx(op):
    from lps_keras.search import EvalContext

    return EvalContext(step=1, key="k", op=op)


def test_failed_candidate_is_journaled_and_the_step_goes_on(tmp_path):
    ref = reference(1)
    # Fail the candidate the reference chose: the step must then choose the best of the others.
    fail_op = ref[1].op
    path = tmp_path / "journal.json"
    with SequentialExecutor() as ex:
        hist = run_expansion(START, macs_latency, Scorer(str(tmp_path / "log"), fail_op=fail_op), 1, max_k=2,
                             executor=ex, journal=SearchJournal(path), progress=QUIET)
    cands = {c.op: c for c in hist[1].candidates}
    assert cands[fail_op].rank == "failed" and "no memory" in cands[fail_op].error and cands[fail_op].score is None
    others = [c for c in ref[1].candidates if c.op != fail_op and c.rank == "slope"]
    assert hist[1].op == max(others, key=lambda c: c.slope).op != fail_op
    saved = json.loads(path.read_text())
    assert [f["op"] for f in saved["failures"].values()] == [fail_op]
    assert "ValueError: no memory" in next(iter(saved["failures"].values()))["error"]
    # Resuming replays the finished step: the failure is not retried, the choice is the same.
    log = tmp_path / "log2"
    again = run_expansion(START, macs_latency, Scorer(str(log)), 1, max_k=2, journal=SearchJournal(path),
                          progress=QUIET)
    assert decisions(again) == decisions(hist) and not read_log(log)


def test_pool_executor_matches_in_process_decisions(tmp_path):
    with PoolExecutor(2) as ex:
        hist = run(tiny_recipe(tmp_path), tmp_path / "out", latency_fn=macs_latency, evaluate_fn=concave_score,
                   recipes_dir=tmp_path / "recipes", progress=QUIET, executor=ex)
    seq = run(tiny_recipe(tmp_path), tmp_path / "seq", latency_fn=macs_latency, evaluate_fn=concave_score,
              recipes_dir=tmp_path / "recipes_seq", progress=QUIET)
    assert decisions(hist) == decisions(seq) == decisions(reference(1)) and len(hist) == 2


def worker_affinity(_):
    """Module level (picklable): the CPU cores this pool worker may run on."""
    time.sleep(0.3)  # keep this worker busy so the other submission lands on the other worker
    return sorted(os.sched_getaffinity(0))


def test_split_cpus_gives_disjoint_contiguous_shares():
    assert split_cpus([3, 0, 2, 1], 2) == [[0, 1], [2, 3]]
    assert split_cpus(range(5), 2) == [[0, 1, 2], [3, 4]]
    assert split_cpus([7], 1) == [[7]]
    with pytest.raises(ExecutorError, match="cannot split 2 CPU"):
        split_cpus([0, 1], 3)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPU cores")
def test_pool_pins_each_worker_to_its_own_cores():
    cpus = sorted(os.sched_getaffinity(0))
    with PoolExecutor(2, pin_cpus=True) as ex:
        got = sorted(ex.map(worker_affinity, range(2)))
    assert got == split_cpus(cpus, 2)
    with PoolExecutor(2) as ex:  # without pinning a worker keeps every core
        assert list(ex.map(worker_affinity, range(1))) == [cpus]
    with pytest.raises(ExecutorError, match="pool executor only"):
        make_executor("ray", pin_cpus=True)


def test_executor_setup_errors(monkeypatch):
    with pytest.raises(ExecutorError, match="unknown executor 'dask'"):
        make_executor("dask")
    with pytest.raises(ExecutorError, match="--latency-resource need --executor ray"):
        make_executor("pool", latency_resource="jetson")
    joined = sys.modules.get("ray") is not None and sys.modules["ray"].is_initialized()
    if importlib.util.find_spec("ray") is not None and not joined:  # (a joined Ray is reused, not re-checked)
        with pytest.raises(ExecutorError, match="--ray-address 127.0.0.1:9: nothing answers there"):
            make_executor("ray", address="127.0.0.1:9")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ExecutorError, match=r"needs Ray, which is not installed: pip install -r requirements-ray.txt"):
        import_ray()


def test_cli_without_ray_gives_one_line_naming_the_extra(tmp_path):
    fake = tmp_path / "noray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    env = {**os.environ, "PYTHONPATH": f"{fake.parent}{os.pathsep}{REPO}"}
    res = subprocess.run([sys.executable, "expand.py", "--recipe", "recipes/expand_synthetic.json", "--output",
                          str(tmp_path / "o"), "--executor", "ray"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "expand.py: error: --executor ray needs Ray, which is not installed: pip install -r " \
           "requirements-ray.txt" in res.stderr
    assert not (tmp_path / "o" / "journal.json").exists()


# --------------------------------------------------------------------------- on a local Ray cluster
@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    saved = {k: os.environ.get(k) for k in ("RAY_USAGE_STATS_ENABLED", "RAY_AUTH_MODE", "PYTHONPATH")}
    os.environ.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled",
                      # Ray workers import this checkout (and this test module's stand-ins) first.
                      PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests"), saved["PYTHONPATH"] or ""]))
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    device = c.add_node(num_cpus=0, resources={"lpsdev": 1})
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    try:
        yield c, device
    finally:
        ray.shutdown()
        c.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_ray_step_reaches_the_process_pool_decisions_with_two_candidates_in_parallel(cluster, tmp_path):
    log = tmp_path / "log"
    with make_executor("ray") as ex:  # joins the cluster this process is connected to
        hist = run(tiny_recipe(tmp_path), tmp_path / "ray", latency_fn=macs_latency,
                   evaluate_fn=Scorer(str(log), sleep=0.3), recipes_dir=tmp_path / "r1", progress=QUIET, executor=ex)
    with PoolExecutor(2) as ex:
        pool = run(tiny_recipe(tmp_path), tmp_path / "pool", latency_fn=macs_latency,
                   evaluate_fn=Scorer(str(tmp_path / "plog")), recipes_dir=tmp_path / "r2", progress=QUIET,
                   executor=ex)
    assert decisions(hist) == decisions(pool) and len(hist[1].candidates) >= 2
    calls = read_log(log)
    assert len(calls) == len(hist[1].candidates) + 1  # each candidate and the start network, once
    overlaps = sum(a["start"] < b["end"] and b["start"] < a["end"] for i, a in enumerate(calls) for b in calls[:i])
    assert overlaps >= 1, "no two Ray tasks ran at the same time"
    journal = json.loads((tmp_path / "ray" / "journal.json").read_text())
    assert len(journal["evaluations"]) == len(calls) and len(journal["steps"]) == 2


def test_ray_task_permanent_error_reaches_the_search_as_itself(cluster):
    from lps_keras.errors import PermanentError

    with make_executor("ray") as ex:
        with pytest.raises(PermanentError, match="of w5 holds another run") as info:
            ex.submit(_conflict, "w5").result()
    assert not isinstance(info.value, CandidateFailed)


def test_ray_task_failure_is_retried_once_then_journaled(cluster, tmp_path):
    fail_op = reference(1)[1].op
    log = tmp_path / "log"
    with make_executor("ray") as ex:
        hist = run_expansion(START, macs_latency, Scorer(str(log), fail_op=fail_op), 1, max_k=2, executor=ex,
                             journal=SearchJournal(tmp_path / "journal.json"), progress=QUIET)
    assert [c["op"] for c in read_log(log)].count(fail_op) == 2  # Ray ran it twice
    failed = [c for c in hist[1].candidates if c.rank == "failed"]
    assert [c.op for c in failed] == [fail_op] and "ValueError: no memory for" in failed[0].error
    assert "failed 2 times on Ray" in failed[0].error and hist[1].op != fail_op


DRIVER = """
import sys
sys.path[:0] = [{repo!r}, {tests!r}]
import ray
from lps_keras.search import SearchJournal, run_expansion
from lps_keras.search.executors import make_executor
from test_executors import START, Scorer, macs_latency

ray.init(address={address!r}, log_to_driver=False)
with make_executor("ray") as ex:
    run_expansion(START, macs_latency, Scorer({log!r}, sleep={sleep}), 1, max_k=2, executor=ex,
                  journal=SearchJournal({journal!r}), progress=print)
print("DRIVER DONE", flush=True)
"""


def test_killed_ray_driver_resumes_without_reevaluating(cluster, tmp_path):
    c, _ = cluster
    journal = tmp_path / "journal.json"

    def driver(log, sleep):
        script = tmp_path / f"driver_{Path(log).name}.py"
        script.write_text(textwrap.dedent(DRIVER.format(repo=str(REPO), tests=str(REPO / "tests"),
                                                        address=c.address, log=str(log), sleep=sleep,
                                                        journal=str(journal))))
        return subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)

    first = driver(tmp_path / "log1", sleep=1.0)
    deadline = time.time() + 120
    evaluated = {}
    while time.time() < deadline and first.poll() is None:
        if journal.exists():
            evaluated = json.loads(journal.read_text())["evaluations"]
            if evaluated:
                break
        time.sleep(0.05)
    assert evaluated, f"the driver journaled nothing: {first.communicate(timeout=10)[0] if first.poll() else ''}"
    os.killpg(first.pid, signal.SIGKILL)  # the driver dies mid-step
    first.wait(timeout=30)
    saved = json.loads(journal.read_text())
    finished = set(saved["evaluations"])
    assert saved["steps"] == [] and finished  # killed in the middle of step 1

    second = driver(tmp_path / "log2", sleep=0.0)
    out, _ = second.communicate(timeout=180)
    assert second.returncode == 0 and "DRIVER DONE" in out, out[-2000:]
    rerun = {c["hash"] for c in read_log(tmp_path / "log2")}
    assert not finished & rerun, "a candidate journaled before the kill was evaluated again"
    final = json.loads(journal.read_text())
    assert set(final["evaluations"]) == finished | rerun and len(final["steps"]) == 2
    hist = run_expansion(START, macs_latency, concave_score, 1, max_k=2, journal=SearchJournal(journal),
                         progress=QUIET)  # replays from the journal
    assert decisions(hist) == decisions(reference(1))


def stub_measure(log):
    """A ``measure_latency`` stand-in that records the Ray node it ran on."""

    def measure(arch, backend, input_shape, warmup, iters, precision, threads):
        import ray

        with open(log, "a") as f:
            f.write(json.dumps({"hash": arch.hash, "node": ray.get_runtime_context().get_node_id()}) + "\n")
        return LatencyStats.from_times([macs_latency(arch)], backend=backend, precision=precision,
                                       input_shape=input_shape, device=device_name(backend), versions={},
                                       threads={}, warmup=warmup, arch_hash=arch.hash)

    return measure


def stub_measure_set(log):
    """A ``measure_set`` stand-in that records the Ray node it ran on; each network "runs" for its
    ``macs_latency`` on a fake clock, so the paired latencies equal the single ones."""

    def measure_set_there(targets, artifacts=None, **kw):
        import ray

        from lps_keras.latency.measure import measure_set

        with open(log, "a") as f:
            f.write(json.dumps({"set": len(targets), "node": ray.get_runtime_context().get_node_id()}) + "\n")
        tick = [0.0]

        def run_for(ms):
            tick[0] += ms / 1000

        runs = [functools.partial(run_for, macs_latency(t)) for t in targets]
        return measure_set(targets, runs=runs, clock=lambda: tick[0], **kw)

    return measure_set_there


def test_latency_tasks_run_only_on_the_node_with_the_resource(cluster, tmp_path):
    from lps_keras.search.latencies import latency_functions

    c, device = cluster
    log, cache = tmp_path / "nodes", tmp_path / "latency_cache.json"
    with make_executor("ray", latency_resource="lpsdev") as ex:
        lat, lat_set = latency_functions("onnxruntime", (1, 64, 128, 3), warmup=0, iters=1, cache=cache, executor=ex,
                                         rounds=2, iters_per_round=1, verbose=False, measure=stub_measure(str(log)),
                                         measure_set=stub_measure_set(str(log)))
        hist = run_expansion(START, lat, concave_score, 1, max_k=2, executor=ex, latency_set_fn=lat_set,
                             progress=QUIET)
        remote_device = ex.on_device(device_name, "onnxruntime")
    logged = read_log(log)
    sets = [m for m in logged if "set" in m]
    measured = [m for m in logged if "hash" in m]
    # L_T and k from rounds timed with the parent (every distinct N + d first), then the step's paired set.
    assert len(sets) >= 2 and sets[0]["set"] == 1 + 9 and sets[-1]["set"] == len(hist[1].candidates) + 1
    assert len(measured) >= 1 and {m["node"] for m in logged} == {device.node_id}
    assert device.node_id != c.head_node.node_id
    assert decisions(hist) == decisions(reference(1))
    entries = json.loads(cache.read_text())["entries"].values()
    assert len(entries) == len(measured) and {e["device"] for e in entries} == {remote_device}
    # The cache (with the driver) answers a rerun: nothing is measured again.
    with make_executor("ray", latency_resource="lpsdev") as ex:
        lat, _ = latency_functions("onnxruntime", (1, 64, 128, 3), warmup=0, iters=1, cache=cache, executor=ex,
                                   verbose=False, measure=stub_measure(str(log)))
        assert lat(START) == pytest.approx(macs_latency(START))  # the step's reference, timed alone once
    assert len(read_log(log)) == len(logged)


def test_ray_setup_errors_are_one_line(cluster):
    with pytest.raises(ExecutorError, match="no node of the Ray cluster offers it"):
        make_executor("ray", latency_resource="no_such_device")
    with pytest.raises(ExecutorError, match="the Ray cluster has 0 GPU"):
        make_executor("ray", gpus_per_task=1)
