"""pytest: run from the repo root so `models`, `data`, `training` and `analysis` import as top-level packages.

`python -m pytest -q tests` runs everything; `python -m pytest -q -m "not slow" tests` skips the tests marked
`@pytest.mark.slow` (end-to-end runs of the scripts, multi-process and long training tests), a quick subset
for iterating."""
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end script runs, multi-process and long training tests, "
                                       "compile checks (deselect with -m 'not slow')")


def pytest_collection_modifyitems(items):
    """The tests that read the background lane's results (`background`) run last, so that the rest overlaps it."""
    items.sort(key=lambda item: item.name == getattr(getattr(item, "module", None), "BACKGROUND_TEST", None))


@pytest.fixture(scope="session", autouse=True)
def background(request, tmp_path_factory):
    """{module name: Future} of the long single-process end-to-end checks, started at session start one after
    another in a second lane, so that they overlap the in-process tests instead of adding to them (the suite
    otherwise keeps one of the machine's cores idle). A test module opts in with `in_background(out_dir)`, the
    work of its test BACKGROUND_TEST, which asserts on the Future's result; nothing starts for an unselected test."""
    selected = {item.module for item in request.session.items
                if item.name == getattr(item.module, "BACKGROUND_TEST", None)}
    pool = ThreadPoolExecutor(max_workers=1)
    yield {m.__name__: pool.submit(m.in_background, tmp_path_factory.mktemp(m.__name__.rsplit(".", 1)[-1]))
           for m in sorted(selected, key=lambda m: m.__name__)}
    pool.shutdown(cancel_futures=True)
