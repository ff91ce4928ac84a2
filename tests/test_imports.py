import subprocess
import sys

HEAVY = ("torch", "tensorrt", "pycuda", "onnx", "sklearn")


def test_edge_never_imports_torch_or_gpu_modules():
    code = (
        "import sys, pkgutil, importlib, edge\n"
        "for m in pkgutil.walk_packages(edge.__path__, 'edge.'):\n"
        "    importlib.import_module(m.name)\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
