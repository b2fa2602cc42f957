"""Type-check the device firmware against MicroPython's ESP32 stubs: ``python firmware/typecheck.py``.

``make lint`` (and so ``make test``) runs it. The stubs (``micropython-esp32-stubs`` with its
``micropython-stdlib-stubs``, both in the test extras) install their modules at the top of
site-packages, where mypy does not look for them (they are not PEP 561 packages), and MicroPython's
``time``, ``os`` or ``sys`` must replace CPython's rather than sit beside them. So this lays them out
as a custom typeshed under .mypy_cache/firmware/typeshed (symbolic links, remade on every run): the
stdlib stubs' ``stdlib/`` with the ESP32 modules (``machine``, ``bluetooth``, ``esp32``, ``time``
...) added to it and to its VERSIONS, and mypy's own ``mypy_extensions`` stubs, which mypy needs.

Then each node is checked as it runs on the ESP32: firmware/lib and the node's directory are both at
the top level (``import node``, ``import hw``), each node with its own cache (both have a ``main``
and a ``hw``). Options are in firmware/mypy.ini. Extra arguments go to mypy.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mypy

FIRMWARE = Path(__file__).resolve().parent
ROOT = FIRMWARE.parent
NODES = ("pendant", "pullcord")
STUB_DISTRIBUTIONS = ("micropython-stdlib-stubs", "micropython-esp32-stubs")


def build_typeshed(dest: Path) -> Path:
    """The custom typeshed for mypy's --custom-typeshed-dir, made of links into site-packages."""
    if dest.exists():
        shutil.rmtree(dest)
    stdlib = dest / "stdlib"
    stdlib.mkdir(parents=True)
    stdlib_dist = importlib.metadata.distribution("micropython-stdlib-stubs")
    source = Path(str(stdlib_dist.locate_file("stdlib")))
    versions = [(source / "VERSIONS").read_text()]
    for entry in sorted(source.iterdir()):
        if entry.name != "VERSIONS":
            (stdlib / entry.name).symlink_to(entry)
    for name in STUB_DISTRIBUTIONS:
        dist = importlib.metadata.distribution(name)
        tops = set()
        for file in dist.files or ():
            top = file.parts[0]
            if top.endswith(".dist-info") or top == "stdlib" or top.startswith("__builtins__"):
                continue  # __builtins__.pyi is for pyright; mypy's builtins are stdlib/builtins.pyi
            if len(file.parts) > 1 or top.endswith(".pyi"):
                tops.add(top)
        for top in sorted(tops):
            link = stdlib / top
            if link.exists():
                raise SystemExit(f"{name} and the stdlib stubs both have {top}; cannot tell which to use")
            link.symlink_to(Path(str(dist.locate_file(top))))
            versions.append(f"{top.removesuffix('.pyi')}: 3.0-\n")
    (stdlib / "VERSIONS").write_text("".join(versions))
    extensions = Path(mypy.__file__).parent / "typeshed" / "stubs" / "mypy-extensions"
    (dest / "stubs").mkdir()
    (dest / "stubs" / "mypy-extensions").symlink_to(extensions)
    return dest


def modules(directory: Path) -> list[str]:
    return [path.stem for path in sorted(directory.glob("*.py")) if path.name != "__init__.py"]


def main(argv: list[str]) -> int:
    cache = ROOT / ".mypy_cache" / "firmware"
    typeshed = build_typeshed(cache / "typeshed")
    status = 0
    for node in NODES:
        node_dir = FIRMWARE / node
        command = [sys.executable, "-m", "mypy", "--config-file", str(FIRMWARE / "mypy.ini")]
        command += ["--custom-typeshed-dir", str(typeshed), "--cache-dir", str(cache / node)]
        for module in modules(FIRMWARE / "lib") + modules(node_dir):
            command += ["-m", module]
        env = dict(os.environ, MYPYPATH=os.pathsep.join([str(FIRMWARE / "lib"), str(node_dir)]))
        result = subprocess.run([*command, *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        for line in result.stdout.splitlines():
            print(f"firmware/{node}: {line}" if line.startswith("Success") or line.startswith("Found") else line)
        status = status or result.returncode
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
