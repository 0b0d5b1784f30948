"""A small LRU cache for loaded backbones and models, bounded by the bytes their tensors hold.

Keeping models warm between calls is why the engine is a long-lived process.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TypeVar

import torch

T = TypeVar("T")


def tensor_bytes(obj: object) -> int:
    """Bytes held by the parameters and buffers of a module (0 for other objects)."""
    if isinstance(obj, torch.nn.Module):
        tensors = list(obj.parameters()) + list(obj.buffers())
        return sum(t.numel() * t.element_size() for t in tensors)
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    return 0


class ModelCache:
    def __init__(self, max_bytes: int = 4 << 30) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, tuple[object, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # how many times a loader actually ran (tests read this)

    def get(self, key: Hashable, loader: Callable[[], T]) -> T:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key][0]  # type: ignore[return-value]
        value = loader()
        size = tensor_bytes(value)
        with self._lock:
            self.loads += 1
            self._items[key] = (value, size)
            self._items.move_to_end(key)
            self._evict()
        return value

    def _evict(self) -> None:
        total = sum(size for _, size in self._items.values())
        while total > self.max_bytes and len(self._items) > 1:
            _, (_, size) = self._items.popitem(last=False)
            total -= size

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
