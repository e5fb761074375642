"""A job's child process: its log and records, its one-line error, a clean stop, death with its parent."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kit.errors import KitError
from kit.progress import (
    PROGRESS_FD,
    EpochRecord,
    ErrorRecord,
    RecordingReporter,
    RecordSink,
    SilentReporter,
    format_epoch,
)
from kit.runs import EpochStats
from kit.sweep.job import End, Job, Start, child_env, marker, read_event, relay_records, run_job
from kit.sweep.progress import Tracker
from kit.sweep.stop import StopSignal


def _script(body: str) -> list[str]:
    return [sys.executable, "-c", body]


STATS = EpochStats(
    epoch=2,
    epochs=10,
    train_loss=0.1234,
    train_images=64,
    train_seconds=1.0,
    images_per_second=99.0,
    valid_mse=12.345,
    valid_seconds=0.25,
    valid_nme=1.5,
)


def test_what_fold_train_emits_is_what_the_sweep_reads(tmp_path):
    """The child's real emitter (an epoch as kit.train.fold reports it, an error) through the sweep's real reader."""
    read_end, write_end = os.pipe()
    sink = RecordSink.from_env({PROGRESS_FD: str(write_end)})  # as fold-train opens it under kit sweep
    stats = STATS.model_dump() | {"is_best": True}
    RecordingReporter(SilentReporter(), sink).end_epoch(2, 2, stats)
    with pytest.raises(KitError), sink.failures():
        raise KitError("data/x.csv: bad row 3")
    os.close(write_end)
    lines: list[str] = []
    with open(read_end, "rb") as stream:
        relay_records(stream, lines.append)  # as run_job writes them into the job's log
    assert [read_event(line) for line in lines] == [
        EpochRecord(
            fold=2,
            epoch=3,
            epochs=10,
            loss=0.1234,
            valid_mse=12.345,
            valid_nme=1.5,
            images_per_second=99.0,
            seconds=1.25,
            best=True,
        ),
        ErrorRecord(text="data/x.csv: bad row 3"),
    ]
    seen: list[str] = []
    tracker = Tracker(tmp_path, "sweep", {}, seen.append)
    for line in lines:
        tracker.line(Job("r", 2, tmp_path / "r.yaml", tmp_path, tmp_path), line)
    assert seen[-1].endswith("r fold 2: epoch 3/10, valid MSE 12.345")
    assert tracker.jobs[("r", 2)].epoch == "3/10" and tracker.jobs[("r", 2)].error == "data/x.csv: bad row 3"
    # what a person reads of the same epoch is unchanged
    assert format_epoch(2, 2, stats) == "fold 2 epoch 3/10  loss 0.1234  valid MSE 12.345  99 img/s  (1.0s + 0.2s) *"


def test_log_lines_that_are_not_records_are_ignored():
    assert read_event(marker(Start(attempt=2, where="node 1"))) == Start(attempt=2, where="node 1")
    assert marker(End(returncode=1)) == '#sweep {"event": "end", "returncode": 1}'
    assert read_event("#sweep not json") is None and read_event('#sweep {"event": "unknown"}') is None
    assert read_event("fold 2 epoch 3/10  loss 0.1234  valid MSE 12.345") is None  # console text is for people
    assert RecordSink.from_env({}).fd is None and RecordSink.from_env({PROGRESS_FD: "9", "RANK": "1"}).fd is None


def test_job_command_is_a_plain_fold_train(tmp_path):
    job = Job("r", 2, tmp_path / "r.yaml", tmp_path / "data", tmp_path / "runs")
    command = job.command("python")
    assert command == [
        "python",
        "-m",
        "kit",
        "fold-train",
        str(tmp_path / "r.yaml"),
        "--data",
        str(tmp_path / "data"),
    ] + [
        "--out",
        str(tmp_path / "runs"),
        "--folds",
        "2",
    ]
    assert Job.from_dict(job.to_dict()) == job


@pytest.mark.slow  # spawns processes
def test_output_and_records_go_to_the_log_and_the_last_error_record_is_the_jobs_error(tmp_path):
    body = (
        "import os, sys\n"
        "from kit.errors import KitError\n"
        "from kit.progress import RecordingReporter, RecordSink, SilentReporter, format_epoch\n"
        f"stats = {STATS.model_dump()!r}\n"
        "sink = RecordSink.from_env()\n"
        "print(format_epoch(0, 0, stats))\n"
        "RecordingReporter(SilentReporter(), sink).end_epoch(0, 0, stats)\n"
        "print('threads', os.environ['OMP_NUM_THREADS'])\n"
        "try:\n"
        "    with sink.failures():\n"
        "        raise KitError('pipelines/x.yaml: unknown key')\n"
        "except KitError as exc:\n"
        "    print(f'error: {exc}', file=sys.stderr)\n"
        "    print('a last line', file=sys.stderr)\n"
        "    sys.exit(1)\n"
    )
    seen, started = [], []
    log = tmp_path / "logs" / "j.log"
    outcome = run_job(
        _script(body), child_env(3), log, header=marker(Start()), on_line=seen.append, on_start=started.append
    )
    assert outcome.returncode == 1 and outcome.error == "pipelines/x.yaml: unknown key" and not outcome.interrupted
    assert started == [outcome.pid]
    assert "threads 3" in seen and seen[0].startswith("#sweep ")
    [epoch] = [event for line in seen if isinstance(event := read_event(line), EpochRecord)]
    assert (epoch.fold, epoch.epoch, epoch.epochs, epoch.valid_mse) == (0, 1, 10, 12.345)
    text = log.read_text()
    assert text.startswith("#sweep ") and "valid MSE 12.345" in text and text.rstrip().endswith('"returncode": 1}')
    run_job(_script("print('again')"), child_env(1), log)  # attempts append
    assert log.read_text().startswith(text) and "again" in log.read_text()


@pytest.mark.slow  # spawns processes
def test_a_crash_without_an_error_line_gives_its_last_line(tmp_path):
    outcome = run_job(_script("raise RuntimeError('out of memory')"), {}, tmp_path / "j.log")
    assert outcome.returncode == 1 and outcome.error == "RuntimeError: out of memory"


@pytest.mark.slow  # spawns processes
def test_stop_sends_sigterm_and_the_job_ends_as_interrupted(tmp_path):
    body = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (print('saved last.pt', flush=True), sys.exit(143)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    stop = StopSignal()

    def on_line(line):
        if line == "ready":
            stop.request()

    began = time.monotonic()
    outcome = run_job(_script(body), {}, tmp_path / "j.log", on_line=on_line, stop=stop)
    assert outcome.returncode == 143 and outcome.interrupted and time.monotonic() - began < 30
    assert "saved last.pt" in (tmp_path / "j.log").read_text()


def _gone(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "\nState:\tZ" in status.read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True


@pytest.mark.slow  # spawns processes
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_a_jobs_child_dies_with_its_parent():
    parent = subprocess.Popen(
        _script(
            "import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-m', 'kit.sweep.launch', 'KILL', sys.executable, '-c', "
            "'import time; time.sleep(120)'])\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(120)\n"
        ),
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(parent.stdout.readline())
    time.sleep(1.0)  # the launcher has exec'd the command
    assert not _gone(child)
    parent.kill()
    parent.wait(timeout=10)
    deadline = time.monotonic() + 10
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(child)
