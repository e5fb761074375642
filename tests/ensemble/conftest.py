"""The blending and stacking tests do many small linear-algebra steps: one BLAS thread each (on a busy 2-core
machine, idle BLAS threads spinning beside another process made the same test 40x slower)."""

import pytest
from threadpoolctl import threadpool_limits


@pytest.fixture(autouse=True)
def one_blas_thread():
    with threadpool_limits(limits=1, user_api="blas"):
        yield
