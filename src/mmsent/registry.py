"""Name -> factory registries. CLI choices, docs and tests are derived from them."""

from __future__ import annotations

from typing import Callable

from .errors import UnknownNameError


class Registry:
    """A named collection of factories, filled with the ``@registry.register("name")`` decorator."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Callable] = {}
        self._metadata: dict[str, dict] = {}

    def register(self, name: str, **metadata):
        """Register a factory under ``name``; keyword arguments are kept as its metadata (see :meth:`metadata`)."""
        def decorate(factory: Callable) -> Callable:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = factory
            self._metadata[name] = dict(metadata)
            return factory

        return decorate

    def metadata(self, name: str) -> dict:
        """What ``name`` was registered with besides its factory (e.g. a model family's config defaults)."""
        self.get(name)
        return self._metadata[name]

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> Callable:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self._entries)}") from None

    def create(self, name: str, *args, **kwargs):
        return self.get(name)(*args, **kwargs)


TEXT_ENCODERS = Registry("text encoder")
IMAGE_ENCODERS = Registry("image encoder")
FUSIONS = Registry("fusion")
LOSSES = Registry("loss")
MODEL_FAMILIES = Registry("model family")
PROFILES = Registry("profile")
GRAPH_RUNTIMES = Registry("graph runtime")  # run an exported frozen encoder (encoders/runtime.py)
