"""shared/ is framework-neutral: no mlx.core, mlx.nn, mlx.optimizers or torch, neither in
its source nor at import time."""
import ast
import pathlib
import subprocess
import sys

SHARED = pathlib.Path(__file__).resolve().parent.parent / "shared"
FORBIDDEN = ("torch", "mlx.core", "mlx.nn", "mlx.optimizers", "mlx.utils")


def forbidden_imports(path: pathlib.Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        bad = [n for n in names
               if n == "mlx" or any(n == f or n.startswith(f + ".") for f in FORBIDDEN)]
        if bad:
            found.append(f"{path.relative_to(SHARED.parent)}:{node.lineno}: {bad[0]}")
    return found


def test_no_framework_imports_in_source():
    files = sorted(SHARED.rglob("*.py"))
    assert files, "shared/ has no Python files?"
    hits = [h for f in files for h in forbidden_imports(f)]
    assert hits == [], "shared/ must not import a framework:\n" + "\n".join(hits)


def test_detector_catches_a_framework_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import numpy\nfrom torch import nn\nimport mlx.core as mx\n")
    global SHARED
    saved, SHARED = SHARED, tmp_path
    try:
        assert len(forbidden_imports(bad)) == 2
    finally:
        SHARED = saved


def test_importing_every_shared_module_loads_no_framework():
    modules = sorted(".".join(p.relative_to(SHARED.parent).with_suffix("").parts)
                     for p in SHARED.rglob("*.py"))
    code = ("import importlib, sys\n"
            f"for m in {modules!r}:\n"
            "    importlib.import_module(m.removesuffix('.__init__'))\n"
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('mlx.core', 'mlx.nn'))]\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=SHARED.parent, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
