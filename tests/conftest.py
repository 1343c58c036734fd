import os

os.environ.setdefault("NUMBA_CACHE_DIR", os.path.expanduser("~/.cache/flare-workbench/numba"))
os.environ.setdefault("FLARE_TEST", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
