"""pytest: run from the repo root so `models`, `data` and `workbench` import as top-level packages."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end runs through subprocesses (tens of seconds each)")
