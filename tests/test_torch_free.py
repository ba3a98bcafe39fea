"""The runtime never imports torch, transformers or optimum: servers embed it without them. Nor does it import
huggingface_hub (the hub extra) until a model is fetched from the Hub."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import sample_photos

BLOCKER = textwrap.dedent(
    """
    import importlib, importlib.util, pkgutil, sys

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "transformers", "optimum", "huggingface_hub"}:
                raise ImportError(f"blocked import of {name}")
            return None

    sys.meta_path.insert(0, Block())
    import fastvit_detect
    for module in pkgutil.walk_packages(fastvit_detect.__path__, "fastvit_detect."):
        if module.name == "fastvit_detect.ray" and importlib.util.find_spec("ray") is None:
            continue  # the ray extra's module: checked when Ray is installed, guarded below when it isn't
        if module.name != "fastvit_detect.__main__":
            importlib.import_module(module.name)
    from fastvit_detect import Detector
    from fastvit_detect.cli import main
    detector = Detector.load(sys.argv[1])
    print(detector.predict(sys.argv[2]).label)
    code = main(["predict", "--model", sys.argv[1], sys.argv[2]])
    loaded = sorted(name for name in sys.modules
                    if name.split(".")[0] in {"torch", "transformers", "optimum", "huggingface_hub"})
    print("LOADED", loaded, "EXIT", code)
    """
)


def test_runtime_and_cli_work_with_torch_blocked(vit_package):
    result = subprocess.run([sys.executable, "-c", BLOCKER, str(vit_package), str(sample_photos()[0])],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "LOADED [] EXIT 0" in result.stdout
    assert result.stdout.splitlines()[0] in ("Fake", "Real")


WITHOUT_RAY = textwrap.dedent(
    """
    import importlib, io, pkgutil, sys
    from contextlib import redirect_stderr

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"ray", "pyarrow"}:
                raise ImportError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Block())
    import fastvit_detect
    for module in pkgutil.walk_packages(fastvit_detect.__path__, "fastvit_detect."):
        if module.name not in ("fastvit_detect.__main__", "fastvit_detect.ray"):
            importlib.import_module(module.name)
    from fastvit_detect.cli import main
    predicted = main(["predict", "--model", sys.argv[1], sys.argv[2]])
    err = io.StringIO()
    with redirect_stderr(err):
        code = main(["scan", sys.argv[3], "--model", sys.argv[1], "--engine", "ray"])
    loaded = sorted(name for name in sys.modules if name.split(".")[0] in {"ray", "pyarrow"})
    print("LOADED", loaded, "PREDICT", predicted, "SCAN", code)
    print(err.getvalue())
    """
)


def test_runtime_works_without_ray_and_the_ray_engine_names_its_extra(vit_package, tmp_path):
    result = subprocess.run([sys.executable, "-c", WITHOUT_RAY, str(vit_package), str(sample_photos()[0]),
                             str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "LOADED [] PREDICT 0 SCAN 2" in result.stdout
    assert "needs the ray extra" in result.stdout and "pip install 'fastvit-detect[ray]'" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
