"""A Ray retry takes over the locks of its own previous attempt only when the cluster says that node is dead."""

import json
import socket

import pytest

from kit.locks import acquire_lock
from kit.runs import LOCK_FILE, RunDir
from kit.sweep.records import JobRecord
from kit.sweep.takeover import take_over_dead_locks

OTHER_HOST, PID, NODE = "node-b", 4242, "ab" * 28


def _lock(path, host=OTHER_HOST, pid=PID):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "host": host, "started": 1.0}))
    return path


def _previous(host=OTHER_HOST, pid=PID, node=NODE):
    return JobRecord(run="r", fold=1, state="running", node=node, host=host, pid=pid)


@pytest.fixture
def run(tmp_path):
    return RunDir(tmp_path / "runs" / "r")


def _take(run, previous, alive, polls=None):
    states = iter(polls) if polls is not None else None

    def node_alive(node):
        assert node == NODE
        return next(states) if states is not None else alive

    return take_over_dead_locks(
        run, 1, previous, socket.gethostname(), node_alive, wait_seconds=0.2, sleep=lambda s: None
    )


def test_a_dead_nodes_fold_and_run_locks_are_taken_over(run):
    fold_lock, run_lock = _lock(run.fold_dir(1) / LOCK_FILE), _lock(run.path / LOCK_FILE)
    notes = _take(run, _previous(), alive=False)
    assert not fold_lock.exists() and not run_lock.exists()
    assert len(notes) == 2 and f"process {PID} on {OTHER_HOST}" in notes[0] and "is dead" in notes[0]


def test_the_retry_waits_for_the_cluster_to_declare_the_node_dead(run):
    fold_lock = _lock(run.fold_dir(1) / LOCK_FILE)
    _take(run, _previous(), alive=None, polls=[True, True, False, False])
    assert not fold_lock.exists()


@pytest.mark.parametrize(
    ("previous", "alive", "why"),
    [
        (_previous(), True, "the node is still alive"),
        (_previous(), None, "the node is unknown to this cluster"),
        (_previous(pid=PID + 1), False, "another process holds it"),
        (_previous(host="node-c"), False, "a process on another host holds it"),
        (None, False, "no previous attempt"),
    ],
)
def test_other_locks_stay(run, previous, alive, why):
    fold_lock = _lock(run.fold_dir(1) / LOCK_FILE)
    assert _take(run, previous, alive) == [], why
    assert fold_lock.exists(), why


def test_a_lock_on_this_host_is_left_to_fold_train(run):
    fold_lock = run.fold_dir(1) / LOCK_FILE
    fold_lock.parent.mkdir(parents=True)
    acquire_lock(fold_lock, "fold 1")  # this process: alive, so not waited for past the bound
    holder = json.loads(fold_lock.read_text())
    previous = _previous(host=socket.gethostname(), pid=holder["pid"])
    notes = take_over_dead_locks(run, 1, previous, socket.gethostname(), lambda n: False, wait_seconds=0.01, poll=0.005)
    assert notes == [] and fold_lock.exists()
