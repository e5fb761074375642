"""``kit sweep --executor ray`` checks the cluster's address in bounded time: a real cluster passes the check (the
cases without a cluster are in tests/faults)."""

import sys
import time

import pytest
from ray_cluster import LocalRayCluster, available

pytestmark = [pytest.mark.slow, pytest.mark.skipif(available() is not None, reason=str(available()))]

CHECK = "import sys; from kit.sweep.ray_executor import check_address; check_address(sys.argv[1], 10.0); print('ok')"


def test_c21_20_the_address_check_accepts_a_real_cluster(tmp_path):
    with LocalRayCluster(tmp_path / "ray", cpus=(1, 1)) as cluster:
        out = tmp_path / "check.out"
        started = time.monotonic()
        proc = cluster.popen([sys.executable, "-c", CHECK, cluster.address], out)
        assert proc.wait(timeout=60) == 0, out.read_text()
        assert out.read_text().strip().endswith("ok") and time.monotonic() - started < 10
