"""The runtime never imports torch, transformers or optimum: servers embed it without them. Nor does it import
huggingface_hub (the hub extra) until a model is fetched from the Hub, nor the build package (fastvit_detect.build)
at all: build-time code imports the runtime, never the other way round."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

from conftest import sample_photos

# Imports of torch, transformers and optimum fail in the child process, as on a server without them.
BLOCK_TORCH = textwrap.dedent(
    """
    import sys

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "transformers", "optimum", "huggingface_hub"}:
                raise ImportError(f"blocked import of {name}")
            return None

    sys.meta_path.insert(0, Block())
    """
)

BLOCKER = BLOCK_TORCH + textwrap.dedent(
    """
    import importlib, importlib.util, pkgutil
    import fastvit_detect
    for module in pkgutil.walk_packages(fastvit_detect.__path__, "fastvit_detect.", onerror=lambda name: None):
        if module.name == "fastvit_detect.ray" and importlib.util.find_spec("ray") is None:
            continue  # the ray extra's module: checked when Ray is installed, guarded below when it isn't
        if module.name.startswith("fastvit_detect.build"):
            continue  # build time: the export extra's (see test_no_runtime_module_imports_the_build_package)
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


def test_runtime_and_cli_work_with_torch_blocked(vit_package, reference):
    result = subprocess.run([sys.executable, "-c", BLOCKER, str(vit_package), str(sample_photos()[0])],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "LOADED [] EXIT 0" in result.stdout
    assert result.stdout.splitlines()[0] == reference.label("vit", sample_photos()[0])


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


EVAL_BLOCKED = BLOCK_TORCH + textwrap.dedent(
    """
    from fastvit_detect.cli import main
    code = main(["eval", "--model", sys.argv[1], "--data", sys.argv[2], "--variant", "fp32", "--json", *sys.argv[3:]])
    print("EXIT", code)
    """
)


def test_runtime_works_without_ray_and_the_ray_engine_names_its_extra(vit_package, tmp_path):
    result = subprocess.run([sys.executable, "-c", WITHOUT_RAY, str(vit_package), str(sample_photos()[0]),
                             str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "LOADED [] PREDICT 0 SCAN 2" in result.stdout
    assert "needs the ray extra" in result.stdout and "pip install 'fastvit-detect[ray]'" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_eval_imports_torch_only_for_the_reference(vit_package, checkpoints, tmp_path):
    for index, photo in enumerate(sample_photos()[:4]):
        folder = tmp_path / ("Fake" if index % 2 else "Real")
        folder.mkdir(exist_ok=True)
        shutil.copyfile(photo, folder / photo.name)

    def blocked_eval(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", EVAL_BLOCKED, str(vit_package), str(tmp_path), *extra],
                              capture_output=True, text=True, timeout=120)

    plain = blocked_eval()
    assert plain.stdout.splitlines()[-1] == "EXIT 0", plain.stderr
    assert json.loads(plain.stdout.splitlines()[0])["variants"][0]["images"] == 4
    with_reference = blocked_eval("--reference", str(checkpoints["vit"]))
    assert with_reference.stdout.splitlines()[-1] == "EXIT 2"
    assert "needs torch and transformers" in with_reference.stderr and "Traceback" not in with_reference.stderr


# Every runtime module imported with fastvit_detect.build unimportable: none may need it, directly or not.
WITHOUT_BUILD = textwrap.dedent(
    """
    import importlib, importlib.util, pkgutil, sys

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name == "fastvit_detect.build" or name.startswith("fastvit_detect.build."):
                raise ImportError(f"blocked import of {name}")
            return None

    sys.meta_path.insert(0, Block())
    import fastvit_detect
    imported = []
    for module in pkgutil.walk_packages(fastvit_detect.__path__, "fastvit_detect.", onerror=lambda name: None):
        if module.name.startswith("fastvit_detect.build") or module.name == "fastvit_detect.__main__":
            continue
        if module.name == "fastvit_detect.ray" and importlib.util.find_spec("ray") is None:
            continue
        importlib.import_module(module.name)
        imported.append(module.name)
    from fastvit_detect.cli import main
    code = main(["info", sys.argv[1]])
    print("IMPORTED", len(imported), "BUILD", sorted(n for n in sys.modules if n.startswith("fastvit_detect.build")),
          "EXIT", code)
    """
)


def test_no_runtime_module_imports_the_build_package(vit_package):
    result = subprocess.run([sys.executable, "-c", WITHOUT_BUILD, str(vit_package)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "BUILD [] EXIT 0" in result.stdout
    assert int(result.stdout.split("IMPORTED ")[1].split()[0]) >= 15  # the walk found the runtime's modules


EXPORT_BLOCKED = BLOCK_TORCH + textwrap.dedent(
    """
    from fastvit_detect.cli import main
    print("EXIT", main(["export", "some/model", "--output", sys.argv[1]]))
    """
)


def test_export_without_the_extra_names_it(tmp_path):
    result = subprocess.run([sys.executable, "-c", EXPORT_BLOCKED, str(tmp_path / "out")], capture_output=True,
                            text=True, timeout=120)
    assert result.stdout.splitlines()[-1] == "EXIT 2", result.stderr
    # The exact wording, once: one sentence, naming what is missing and the install command a single time.
    assert result.stderr == ("fastvit-detect: error: fastvit_detect.build needs the export extra (torch, transformers, "
                             "optimum missing); install it with: pip install 'fastvit-detect[export]'\n")
    assert not (tmp_path / "out").exists()
