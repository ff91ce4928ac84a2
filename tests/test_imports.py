import ast
import subprocess
import sys
from pathlib import Path

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


# The simulator is a choice of parts made by the head file: only the assembly (when a head file
# names a simulated part) and the command line (to register the simulator's commands) reach it.
MAY_IMPORT_SIM = {"edge/assembly.py", "edge/cli.py"}


def _runtime_modules() -> list[str]:
    import edge

    root = Path(edge.__file__).parent
    return sorted("edge." + ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(
        ".__init__") for p in root.rglob("*.py") if "sim" not in p.relative_to(root).parts)


def test_no_runtime_module_imports_the_simulator():
    code = (
        "import importlib, sys\n"
        f"for name in {_runtime_modules()!r}:\n"
        "    importlib.import_module(name)\n"
        "    sim = sorted(m for m in sys.modules if m == 'edge.sim' or m.startswith('edge.sim.'))\n"
        "    if sim:\n"
        "        print(name, sim)\n"
        "        break\n"
        "print('checked', len(sys.modules) > 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "checked True", out.stdout


def test_only_the_assembly_and_the_cli_name_the_simulator():
    import edge

    root = Path(edge.__file__).parent.parent
    offenders = []
    for path in sorted((root / "edge").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("edge/sim/") or rel in MAY_IMPORT_SIM:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{rel}: {n}" for n in names if n == "edge.sim" or
                          n.startswith("edge.sim.")]
    assert offenders == []


def test_the_command_line_parser_loads_no_runtime():
    # --help and every command's parser: no Numba, ONNX Runtime, image libraries or the
    # assembly; a command imports what it runs when it runs (Polygraphy's lazy imports)
    code = ("import sys\nfrom edge.cli import build_parser\nbuild_parser()\n"
            "print(sorted(m for m in ('numba', 'llvmlite', 'onnxruntime', 'tifffile', 'PIL', "
            "'scipy', 'torch', 'edge.assembly', 'edge.darkfield.classify', 'edge.sim.optics') "
            "if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
