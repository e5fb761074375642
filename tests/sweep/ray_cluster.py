"""A two-node Ray cluster on this machine for tests, reachable only from inside a private network namespace.

Ray's servers listen on every interface of the namespace they run in, so the cluster (head, second node and
driver) runs in a network namespace of its own that has nothing but its loopback: nothing is reachable from
outside. The second node also gets its own host name (UTS namespace), as a second machine would, so that its fold
locks name another host. Both need root (``unshare``); ``available()`` says whether this machine allows them.

Every process of the cluster is a child of a ``ray start --block`` started here in its own process group:
``stop()`` ends exactly those groups (never ``ray stop``, which ends every Ray process of the user on the machine).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
HEALTH = {  # the head declares a dead node dead within seconds instead of ~30 s
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}
WORKER_HOST = "kit-sweep-node2"


def available() -> str | None:
    """None when the cluster can run here, else why not."""
    if shutil.which("unshare") is None or shutil.which("nsenter") is None or shutil.which("ip") is None:
        return "needs unshare, nsenter and ip (util-linux, iproute2)"
    try:
        import ray  # noqa: F401
    except ImportError:
        return "ray is not installed (pip install -e '.[sweep]')"
    probe = subprocess.run(["unshare", "--net", "--uts", "true"], capture_output=True, timeout=30)
    return None if probe.returncode == 0 else "unshare --net --uts is not permitted here (needs root)"


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class LocalRayCluster:
    """Head (``cpus[0]`` CPUs) and a second node (``cpus[1]``) on 127.0.0.1:``port`` in a private namespace."""

    def __init__(self, log_dir: Path, cpus: tuple[int, int] = (1, 1), port: int = 6380):
        self.log_dir = Path(log_dir)
        self.cpus = cpus
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.temp_dir = tempfile.mkdtemp(prefix="kr", dir="/tmp")  # short: Ray's socket paths must stay < 108
        self._holder: subprocess.Popen | None = None
        self.head: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None

    # --- processes inside the namespace ---------------------------------------------------------------------------

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the cluster's network namespace."""
        return ["nsenter", f"--net=/proc/{self._holder.pid}/ns/net", "--", *argv]

    def popen(self, argv: list[str], log: Path, env: dict | None = None, **kwargs) -> subprocess.Popen:
        out = open(log, "ab")  # noqa: SIM115 - closed with the process
        try:
            return subprocess.Popen(
                self.command(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
                **kwargs,
            )
        finally:
            out.close()

    def _ray_start(self, extra: list[str], log: Path, env: dict, uts_host: str | None = None) -> subprocess.Popen:
        argv = [RAY, "start", *extra, "--disable-usage-stats", "--object-store-memory", "100000000", "--block"]
        if uts_host is not None:
            argv = ["unshare", "--uts", "sh", "-c", f'hostname {uts_host} && exec "$@"', "sh", *argv]
        return self.popen(argv, log, env=env)

    def start(self, timeout: float = 90.0) -> LocalRayCluster:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._holder = subprocess.Popen(
            ["unshare", "--net", "sh", "-c", "ip link set lo up && exec sleep 3600"],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._wait(lambda: self._lo_up(), timeout, "loopback of the namespace")
        env = os.environ | HEALTH
        head = ["--head", "--port", str(self.port), "--num-cpus", str(self.cpus[0]), "--include-dashboard=false"]
        head += ["--node-ip-address", "127.0.0.1", "--temp-dir", self.temp_dir]
        self.head = self._ray_start(head, self.log_dir / "head.log", env)
        self._wait(lambda: self._started(self.log_dir / "head.log", self.head), timeout, "Ray head")
        worker = ["--address", self.address, "--num-cpus", str(self.cpus[1]), "--node-ip-address", "127.0.0.1"]
        self.worker = self._ray_start(worker, self.log_dir / "worker.log", env, uts_host=WORKER_HOST)
        self._wait(lambda: self._started(self.log_dir / "worker.log", self.worker), timeout, "Ray second node")
        self._wait(lambda: self.alive_nodes() == 2, timeout, "two live nodes")
        return self

    def _lo_up(self) -> bool:
        probe = subprocess.run(self.command(["ip", "-o", "link", "show", "lo"]), capture_output=True, text=True)
        return probe.returncode == 0 and "UP" in probe.stdout

    @staticmethod
    def _started(log: Path, proc: subprocess.Popen) -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited ({proc.returncode}): {log.read_text()[-2000:]}")
        return log.is_file() and "Ray runtime started" in log.read_text(errors="replace")

    def alive_nodes(self) -> int:
        code = (
            f"import ray, logging; ray.init(address={self.address!r}, logging_level=logging.ERROR, "
            "log_to_driver=False); print(sum(bool(n['Alive']) for n in ray.nodes()))"
        )
        probe = subprocess.run(self.command([sys.executable, "-c", code]), capture_output=True, text=True, timeout=60)
        lines = probe.stdout.strip().splitlines()
        return int(lines[-1]) if probe.returncode == 0 and lines and lines[-1].isdigit() else -1

    @staticmethod
    def _wait(condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not ready within {timeout:.0f}s")
            time.sleep(0.5)

    # --- failure and teardown -------------------------------------------------------------------------------------

    def kill_worker_node(self) -> None:
        """The second node dies at once, as a machine would: every process under its ``ray start`` (raylet,
        workers, agents, their children; Ray starts some in process groups of their own) is stopped, then killed."""
        doomed = [self.worker.pid, *_descendants(self.worker.pid)]
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in doomed:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        self.worker.wait(timeout=30)

    def stop(self) -> None:
        """End every process of the cluster: ``ray start`` is asked first, then whatever is left is killed."""
        procs = [proc for proc in (self.worker, self.head) if proc is not None]
        tree = [pid for proc in procs if proc.poll() is None for pid in (proc.pid, *_descendants(proc.pid))]
        for proc in procs:
            if proc.poll() is None:
                _kill_group(proc, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=5)  # ray start may end its processes itself (it drains for up to 30 s)
            except subprocess.TimeoutExpired:
                pass
        for pid in tree:  # some of Ray's processes run in process groups of their own
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in procs:
            _kill_group(proc, signal.SIGKILL)
            proc.wait(timeout=30)
        if self._holder is not None:
            _kill_group(self._holder, signal.SIGKILL)
            self._holder.wait(timeout=30)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalRayCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
