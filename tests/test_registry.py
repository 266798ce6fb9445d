"""Registries: each imports the modules that fill it (its providers) on first use, orders its names by provider
whatever was imported first, keeps each entry's typed config, and retries a provider whose import failed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

from mmsent.registry import REGISTRIES, Registry

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def plugin_modules(tmp_path, monkeypatch):
    """write(name, source): a module on sys.path that can ``from holder import THINGS`` (a fresh registry)."""
    holder = types.ModuleType("holder")
    monkeypatch.setitem(sys.modules, "holder", holder)
    monkeypatch.syspath_prepend(str(tmp_path))
    written = []

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        written.append(name)
        return name

    yield holder, write
    for name in written:
        sys.modules.pop(name, None)


def test_providers_are_imported_on_first_use_and_order_the_names(plugin_modules):
    holder, write = plugin_modules
    first = write("plugin_first", """
        from holder import THINGS

        @THINGS.register("b")
        def b(): return "b"
    """)
    second = write("plugin_second", """
        from holder import THINGS

        @THINGS.register("a")
        def a(): return "a"
    """)
    holder.THINGS = Registry("thing", providers=(first, second))
    assert second not in sys.modules
    __import__(second)  # imported before the registry's first use: it still comes after the first provider
    assert holder.THINGS.names() == ["b", "a"]
    assert holder.THINGS.create("a") == "a" and "b" in holder.THINGS


def test_a_failed_provider_is_reported_again_and_retried_whole(plugin_modules):
    holder, write = plugin_modules
    broken = write("plugin_broken", """
        from holder import THINGS

        @THINGS.register("half")
        def half(): return 1

        import a_package_that_is_not_installed
    """)
    fine = write("plugin_fine", """
        from holder import THINGS

        @THINGS.register("whole")
        def whole(): return 2
    """)
    holder.THINGS = Registry("thing", providers=(fine, broken))
    for _ in range(2):  # the second use imports it again instead of calling "half" registered twice
        with pytest.raises(ImportError, match="a_package_that_is_not_installed"):
            holder.THINGS.names()
    write(broken, """
        from holder import THINGS

        @THINGS.register("half")
        def half(): return 1
    """)  # the package installed: the provider imported before it keeps what it registered
    assert holder.THINGS.names() == ["whole", "half"]


def test_an_entry_keeps_its_typed_config():
    @dataclass
    class Options:
        width: int = 3

    things = Registry("thing")
    things.register("with", config=Options, note="x")(lambda options: options.width)
    things.register("without")(lambda: 0)
    assert things.config_of("with") is Options and things.metadata("with")["note"] == "x"
    assert things.config_of("without") is None
    assert things.create("with", Options(width=5)) == 5
    with pytest.raises(TypeError, match="dataclass"):
        things.register("bad", config=dict)


@pytest.mark.parametrize("registry", REGISTRIES, ids=lambda registry: registry.kind)
def test_every_provider_registers_something(registry):
    names = registry.names()
    assert names, registry.kind
    assert sorted({registry._order[name] for name in names}) == list(range(len(registry.providers)))


def test_data_formats_and_profiles_load_without_torch():
    code = ("import sys\nfrom mmsent.registry import FORMATS, PROFILES, TABLE_SUFFIXES\n"
            "print(FORMATS.names(), PROFILES.names(), TABLE_SUFFIXES.names())\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert "'table'" in done.stdout and "'fast'" in done.stdout and "'.csv'" in done.stdout
