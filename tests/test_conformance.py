"""Every built-in layer passes the conformance kit that plugin authors run."""
import pytest

from corenet import testing
from corenet.registry import registry
from layer_table import LAYERS, builtin_names, layer_id


def test_every_registered_layer_has_a_row():
    assert {name for name, _, _ in LAYERS} == builtin_names()


@pytest.mark.parametrize("check", testing.CHECKS, ids=lambda check: check.__name__)
@pytest.mark.parametrize("row", LAYERS, ids=layer_id)
def test_conformance(row, check):
    name, config, shapes = row
    check(registry.layer(name), config, shapes)
