"""A job's child process: its log and parsed lines, its one-line error, a clean stop, death with its parent."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from kit.sweep.job import Job, child_env, marker, parse_line, run_job
from kit.sweep.stop import StopSignal


def _script(body: str) -> list[str]:
    return [sys.executable, "-c", body]


def test_parse_line():
    assert parse_line("fold 2 epoch 3/10  loss 0.1234  valid MSE 12.345  99 img/s  (1.0s + 0.1s) *") == {
        "event": "epoch",
        "fold": 2,
        "epoch": 3,
        "epochs": 10,
        "valid_mse": "12.345",
    }
    assert parse_line("error: data/x.csv: bad row 3\n") == {"event": "error", "text": "data/x.csv: bad row 3"}
    assert parse_line(marker("start", attempt=2, where="node 1")) == {"event": "start", "attempt": 2, "where": "node 1"}
    assert parse_line("#sweep not json") is None and parse_line("loading") is None


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
def test_output_goes_to_the_log_and_the_last_error_line_is_the_jobs_error(tmp_path):
    body = (
        "import sys, os\n"
        "print('fold 0 epoch 1/2  loss 1.0  valid MSE 3.5  10 img/s')\n"
        "print('threads', os.environ['OMP_NUM_THREADS'])\n"
        "print('error: first', file=sys.stderr)\n"
        "print('error: pipelines/x.yaml: unknown key', file=sys.stderr)\n"
        "sys.exit(1)\n"
    )
    seen, started = [], []
    log = tmp_path / "logs" / "j.log"
    outcome = run_job(
        _script(body), child_env(3), log, header=marker("start"), on_line=seen.append, on_start=started.append
    )
    assert outcome.returncode == 1 and outcome.error == "pipelines/x.yaml: unknown key" and not outcome.interrupted
    assert started == [outcome.pid]
    assert "threads 3" in seen and seen[0].startswith("#sweep ")
    text = log.read_text()
    assert text.startswith("#sweep ") and "valid MSE 3.5" in text and text.rstrip().endswith('"returncode": 1}')
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
