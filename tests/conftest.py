"""Shared test setup: no network, two CPU threads, a fixed seed for every test."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

# HF_FREQKD_TEST_THREADS=1 lets several test runs share the machine without slowing each other.
torch.set_num_threads(int(os.environ.get("HF_FREQKD_TEST_THREADS", "2")))


@pytest.fixture(autouse=True)
def seed():
    """Every test starts from the same random state."""
    torch.manual_seed(0)
    np.random.seed(0)
    return 0
