"""Coverage of the runtime in the subprocesses a test starts (a server under attack, the CLI, a docs example), for
scripts/mutate_all.py's map. Python imports this at start-up when its folder is on PYTHONPATH; it does nothing
unless ``FASTVIT_SUBPROCESS_COVERAGE`` names a data file and a test is running (pytest's ``PYTEST_CURRENT_TEST``,
which the process inherited). What it measures is labelled with the test *file*: a server started by a module's
fixture serves every test of that file, so a mutant there is run against the whole file."""

import os

_DATA_FILE = os.environ.get("FASTVIT_SUBPROCESS_COVERAGE")
_TEST = os.environ.get("PYTEST_CURRENT_TEST", "").split("::", 1)[0]

if _DATA_FILE and _TEST:
    try:
        import coverage
    except ImportError:  # a child running another interpreter: not measured
        pass
    else:
        _coverage = coverage.Coverage(data_file=_DATA_FILE, data_suffix=True, source=["fastvit_detect"],
                                      context=f"{_TEST}|subprocess", config_file=False)
        _coverage.start()
        import atexit

        def _save() -> None:
            _coverage.stop()
            _coverage.save()

        atexit.register(_save)
