"""The runtime never imports torch, transformers or optimum: servers embed it without them. Nor does it import
huggingface_hub (the hub extra) until a model is fetched from the Hub."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import sample_photos

BLOCKER = textwrap.dedent(
    """
    import importlib, pkgutil, sys

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "transformers", "optimum", "huggingface_hub"}:
                raise ImportError(f"blocked import of {name}")
            return None

    sys.meta_path.insert(0, Block())
    import fastvit_detect
    for module in pkgutil.walk_packages(fastvit_detect.__path__, "fastvit_detect."):
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
