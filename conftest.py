"""pytest: run from the repo root so `models`, `data`, `training` and `analysis` import as top-level packages.

`python -m pytest -q tests` runs everything; `python -m pytest -q -m "not slow" tests` skips the tests marked
`@pytest.mark.slow` (end-to-end runs of the scripts, multi-process and long training tests), a quick subset
for iterating."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end script runs, multi-process and long training tests, "
                                       "compile checks (deselect with -m 'not slow')")
