"""What ``corenet info`` and ``corenet.show_config()`` report."""
import platform

from corenet.kernels import gemm, threads


def build_info() -> dict:
    import corenet

    return {
        "corenet": corenet.__version__,
        "python": platform.python_version(),
        "compile flags": threads.compile_flags(),
        "openmp": "on" if threads.openmp_enabled() else "off (serial kernels)",
        "threads": threads.get_num_threads(),
        "simd width": f"{gemm.simd_bytes() * 8} bits",
        "fma": "on" if gemm.fused_multiply_add() else "off",
        "gemm tile": "x".join(map(str, gemm.tile_shape("float32"))) + " (float32), "
                     + "x".join(map(str, gemm.tile_shape("float64"))) + " (float64)",
        "gemm blocks": ", ".join(f"{key} {value}" for key, value in gemm.blocks().items()),
    }
