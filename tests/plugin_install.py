"""Installing a plugin's source folder for one test, into a folder of the test's own:
nothing lands in site-packages, and the plugin builds against the corenet under test."""
import os
import subprocess
import sys


def install_plugin(source, target) -> dict:
    """pip-install the project in ``source`` into the folder ``target``, without build
    isolation: its kernels cimport the corenet being tested, which an isolated build
    environment would not have. Returns the environment in which the plugin is
    importable and found through its entry point, the corenet under test still first."""
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-build-isolation", "--no-deps",
         "--target", str(target), str(source)], capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]
    paths = [str(target)] + [path for path in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                             if path]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths))


def run(command: list, folder, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    """``command`` with this Python, in ``folder``: not the checkout, whose corenet folder
    would shadow the installed corenet."""
    return subprocess.run([sys.executable] + command, cwd=folder, capture_output=True,
                          text=True, env=env, timeout=timeout)
