"""Regenerates the coefficients of vector_math.h: `python -m corenet.kernels.fit_approximations`.

exp: e^r − 1 ≈ r + r² · p(r) on |r| <= ln2/2, p of degree 4.
tanh: tanh x ≈ x · P(x²) / Q(x²) on 0 < x <= 9 with Q(0) = 1, P of degree 5
and Q of degree 3.

Both are fitted for the smallest relative error by iteratively reweighted
linear least squares (for tanh on x · P(u) − tanh(x) · Q(u) = 0, u = x² / 81
scaled so that the powers stay well conditioned), the weights growing where
the error is largest. Prints the coefficients and the errors.
"""
import numpy as np

LIMIT = 9.0
P_DEGREE, Q_DEGREE = 5, 3


def fit_exp(iterations: int = 80):
    """Coefficients of p, lowest power first, and the relative error of e^r − 1."""
    half_ln2 = np.log(2) / 2
    r = np.linspace(-half_ln2, half_ln2, 20000)  # even count: no r = 0
    target = (np.expm1(r) - r) / r**2
    scale = r**2 / np.expm1(r)  # turns an error in p into a relative error in e^r − 1
    powers = r[:, None] ** np.arange(5)
    weights = np.ones_like(r)
    best = (np.inf, None)
    for _ in range(iterations):
        p, *_ = np.linalg.lstsq(powers * (scale * weights)[:, None], target * scale * weights,
                                rcond=None)
        error = np.abs(scale * (powers @ p - target))
        if error.max() < best[0]:
            best = (error.max(), p)
        weights *= np.sqrt(error / error.mean())
        weights /= weights.mean()
    return best[1], best[0]


def fit_tanh(iterations: int = 60):
    x = np.concatenate([np.linspace(1e-4, 1, 6000), np.linspace(1, LIMIT, 12000)])
    target = np.tanh(x)
    u = x * x / LIMIT**2
    weights = np.ones_like(x)
    best = (np.inf, None, None)
    for _ in range(iterations):
        numerator = x[:, None] * u[:, None] ** np.arange(P_DEGREE + 1)
        denominator = -(target[:, None] * u[:, None] ** np.arange(1, Q_DEGREE + 1))
        system = np.hstack([numerator, denominator]) / target[:, None]
        solution, *_ = np.linalg.lstsq(system * weights[:, None], weights, rcond=None)
        p, q = solution[:P_DEGREE + 1], np.concatenate([[1.0], solution[P_DEGREE + 1:]])
        approx = x * np.polyval(p[::-1], u) / np.polyval(q[::-1], u)
        error = np.abs(approx - target) / target
        if error.max() < best[0]:
            best = (error.max(), p, q)
        weights *= np.sqrt(error / error.mean())
        weights /= weights.mean()
    error, p, q = best
    # Back to powers of x².
    p = p / LIMIT ** (2 * np.arange(P_DEGREE + 1))
    q = q / LIMIT ** (2 * np.arange(Q_DEGREE + 1))
    return error, p, q


def float32_error(p, q) -> float:
    x = np.concatenate([np.linspace(-LIMIT, LIMIT, 400000),  # even: no 0
                        np.geomspace(1e-20, 1, 2000)]).astype(np.float32)
    z = x * x
    numerator = np.full_like(z, np.float32(p[-1]))
    for c in p[-2::-1]:
        numerator = numerator * z + np.float32(c)
    denominator = np.full_like(z, np.float32(q[-1]))
    for c in q[-2::-1]:
        denominator = denominator * z + np.float32(c)
    approx = (x * numerator / denominator).astype(np.float64)
    exact = np.tanh(x.astype(np.float64))
    return float(np.max(np.abs(approx - exact) / np.abs(exact)))


if __name__ == "__main__":
    p_exp, exp_error = fit_exp()
    print(f"exp: relative error of e^r - 1 {exp_error:.2e}")
    print("p (r^0 .. r^4):", ", ".join(repr(float(c)) for c in p_exp))
    error, p, q = fit_tanh()
    print("tanh:")
    print(f"float64 relative error {error:.2e}, float32 {float32_error(p, q):.2e}")
    print("P (x^0 .. x^10):", ", ".join(repr(float(c)) for c in p))
    print("Q (x^0 .. x^6):", ", ".join(repr(float(c)) for c in q))
