"""Package exports resolve on first use, once, and unknown names fail like a normal module's."""

from __future__ import annotations

import subprocess
import sys

import pytest

import embedpipe


@pytest.mark.parametrize("package", ["embedpipe", "embedpipe.codegen", "embedpipe.pipeline"])
def test_every_export_resolves_to_its_defining_module(package):
    mod = __import__(package, fromlist=["_EXPORTS"])
    for name, sub in mod._EXPORTS.items():
        value = getattr(mod, name)
        assert value is getattr(sys.modules[f"{package}.{sub}"], name)
        assert mod.__dict__[name] is value  # stored: the next lookup never reaches __getattr__
        assert name in dir(mod)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        embedpipe.nope  # noqa: B018


def test_importing_the_packages_loads_none_of_their_exports():
    code = (
        "import sys, embedpipe, embedpipe.codegen, embedpipe.pipeline\n"
        "heavy = [m for m in ('numpy', 'embedpipe.runtime.embedder', 'embedpipe.pipeline.job') if m in sys.modules]\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
