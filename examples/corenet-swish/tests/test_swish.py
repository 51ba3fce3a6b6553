"""What a plugin author runs: corenet's conformance kit, plus a reference check."""
import numpy as np

import corenet.layers as L
from corenet.testing import check_layer


def test_conformance():
    check_layer(L.Swish, {}, [(7,)])


def test_matches_numpy():
    x = np.linspace(-5, 5, 11)[None, :]
    np.testing.assert_allclose(L.Swish().forward(x), x / (1 + np.exp(-x)), rtol=1e-12)
