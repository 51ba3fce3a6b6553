"""corenet's shared kernels. ``matmul`` is the GEMM for Python callers; Cython
plugins cimport the C-level functions from the .pxd files here."""
import os


def _load_openmp_with_short_spin():
    """Import the kernels, so that GNU OpenMP loads, with idle threads that spin
    briefly before they sleep.

    libgomp reads its settings once, when it loads. By default an idle thread
    polls for 300,000 rounds (milliseconds) before it sleeps: between two kernels
    it takes a core from the Python thread and from any other process, and with a
    core busy elsewhere every parallel region waits for a thread that is not
    running. A thousand rounds (tens of µs) still bridge the gap between the
    kernels of one training step. A user's OMP_WAIT_POLICY or GOMP_SPINCOUNT wins;
    the variable is removed again so that libraries loaded later (PyTorch's own
    libgomp) keep their defaults. No effect if libgomp was loaded already.
    """
    ours = "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ
    if ours:
        os.environ["GOMP_SPINCOUNT"] = str(SPIN_ROUNDS)
    try:
        from corenet.kernels import gemm
    except ImportError as error:
        raise ImportError(
            f"corenet's compiled kernels are missing from {os.path.dirname(__file__)} "
            f"({error}): this is a source folder that was not built. Install corenet "
            f"(pip install .) and run from another folder, or build it in place "
            f"(python setup.py build_ext --inplace)") from error
    finally:
        if ours:
            del os.environ["GOMP_SPINCOUNT"]
    return gemm


SPIN_ROUNDS = 1000
_load_openmp_with_short_spin()

from corenet.kernels.gemm import matmul, reference_matmul  # noqa: E402

__all__ = ["matmul", "reference_matmul"]
