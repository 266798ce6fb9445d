"""Name -> factory registries. CLI choices, docs and tests are derived from them.

A registry names the modules that fill it (``providers``) and imports them the first time it is asked for its
entries: registration is importing the module that defines a plugin, and nothing has to be loaded beforehand.
Adding a plugin to a module already listed touches that module only; a new module is one more name in its
registry's ``providers`` below.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from typing import Callable

from .errors import UnknownNameError


class Registry:
    """A named collection of factories, filled with the ``@registry.register("name")`` decorator by the modules of
    ``providers`` (imported on first use)."""

    def __init__(self, kind: str, providers: tuple[str, ...] = ()):
        self.kind = kind
        self.providers = tuple(providers)
        self._entries: dict[str, Callable] = {}
        self._metadata: dict[str, dict] = {}
        self._order: dict[str, int] = {}  # name -> index of the provider that registered it
        self._loaded = not self.providers
        self.loading = False  # True while the providers are being imported

    def load(self) -> "Registry":
        """Import the provider modules (once). A provider whose import fails (a missing optional package) is
        forgotten with what it registered, and the error propagates: the next use imports it again and reports it
        again, the providers imported before it are kept."""
        if self._loaded:
            return self
        self._loaded = self.loading = True  # a provider that looks itself up while imported sees what is registered
        try:
            for module in self.providers:
                before = set(self._entries)
                try:
                    importlib.import_module(module)
                except BaseException:
                    self._loaded = False
                    for name in set(self._entries) - before:  # Python forgets the failed module: forget its half
                        del self._entries[name], self._metadata[name], self._order[name]
                    raise
        finally:
            self.loading = False
        return self

    def register(self, name: str, config: type | None = None, **metadata):
        """Register a factory under ``name`` with its typed ``config`` (a dataclass the factory is called with;
        :meth:`config_of`); other keyword arguments are kept as its metadata (see :meth:`metadata`)."""
        if config is not None and not dataclasses.is_dataclass(config):
            raise TypeError(f"{self.kind} {name!r}: config must be a dataclass, got {config!r}")

        def decorate(factory: Callable) -> Callable:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = factory
            self._metadata[name] = dict(metadata, config=config)
            self._order[name] = self._provider_index()
            return factory

        return decorate

    def _provider_index(self) -> int:
        """The place in ``providers`` of the module registering now (a caller a few frames up: it may register
        through a helper), or after them all."""
        frame = sys._getframe(2)
        while frame is not None:
            module = frame.f_globals.get("__name__")
            if module in self.providers:
                return self.providers.index(module)
            frame = frame.f_back
        return len(self.providers)

    def metadata(self, name: str) -> dict:
        """What ``name`` was registered with besides its factory (e.g. a model family's config defaults)."""
        self.get(name)
        return self._metadata[name]

    def config_of(self, name: str) -> type | None:
        """The typed config ``name`` registered with (None: it takes none)."""
        return self.metadata(name)["config"]

    def names(self) -> list[str]:
        """The registered names in the order of their providers (whichever was imported first), then of
        registration."""
        return sorted(self.load()._entries, key=self._order.__getitem__)

    def __contains__(self, name: str) -> bool:
        return name in self.load()._entries

    def get(self, name: str) -> Callable:
        try:
            return self.load()._entries[name]
        except KeyError:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self._entries)}") from None

    def create(self, name: str, *args, **kwargs):
        return self.get(name)(*args, **kwargs)


TEXT_ENCODERS = Registry("text encoder", providers=("mmsent.encoders.text",))
IMAGE_ENCODERS = Registry("image encoder", providers=("mmsent.encoders.image",))
FUSIONS = Registry("fusion", providers=("mmsent.fusion",))
LOSSES = Registry("loss", providers=("mmsent.losses",))
MODEL_FAMILIES = Registry("model family", providers=("mmsent.model",))
PROFILES = Registry("profile", providers=("mmsent.profiles",))
GRAPH_RUNTIMES = Registry("graph runtime", providers=("mmsent.encoders.runtime",))  # run an exported frozen encoder
# Data formats, in detection order (the first that recognises a path reads it): mmsent.data.formats.
FORMATS = Registry("data format", providers=("mmsent.data.folder", "mmsent.data.mvsa", "mmsent.data.table"))
TABLE_SUFFIXES = Registry("table suffix", providers=("mmsent.data.table",))  # how a table file is read and written

REGISTRIES = (TEXT_ENCODERS, IMAGE_ENCODERS, FUSIONS, LOSSES, MODEL_FAMILIES, PROFILES, GRAPH_RUNTIMES, FORMATS,
              TABLE_SUFFIXES)


def load_all() -> None:
    """Import every registry's providers (an ImportError names a missing optional package, e.g. torch)."""
    for registry in REGISTRIES:
        registry.load()
