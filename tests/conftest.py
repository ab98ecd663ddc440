import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def pytest_configure(config):
    # The tests use small tensors; with 2 cores and `-n 2` one torch thread per process avoids
    # oversubscription (20-100x slowdowns were seen with the default thread count).
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


@pytest.fixture()
def img(tmp_path):
    """The demo's 8x8 LR image as an 8-bit PNG (``cli_helpers.demo_png``)."""
    from cli_helpers import demo_png

    return demo_png(tmp_path / "in.png")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    gpu = pytest.mark.skip(reason="needs a CUDA device")
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # torch missing is reported by the tests that import it
        has_cuda = False
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(gpu)
