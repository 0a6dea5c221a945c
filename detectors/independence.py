"""Independence: how much a set of reports counts, whoever sent them (DESIGN "Independent").

A reporter counts once; accounts that share a device count once; one person using two devices
still counts once. So reporters and devices are nodes of a union-find, every report joins its
reporter to its device, and each connected group counts once, at the highest source weight any
of its reports carries (one staff report makes a group worth a staff member).
"""

from __future__ import annotations


class Independence:
    """Incremental union-find over reporter and device keys with a weight per group.

    `groups` counts the groups that weigh something: a blocked reporter (weight 0) is no
    independent voice.
    """

    __slots__ = ("_parent", "_weight", "score", "groups")

    def __init__(self) -> None:
        self._parent: dict[str, str] = {}
        self._weight: dict[str, float] = {}
        self.score = 0.0
        self.groups = 0

    def __getstate__(self) -> tuple:
        return (self._parent, self._weight, self.score, self.groups)

    def __setstate__(self, state: tuple) -> None:
        self._parent, self._weight, self.score, self.groups = state

    def _find(self, key: str) -> str:
        parent = self._parent
        root = key
        while parent[root] != root:
            root = parent[root]
        while parent[key] != root:  # path compression
            parent[key], key = root, parent[key]
        return root

    def _ensure(self, key: str) -> str:
        if key in self._parent:
            return self._find(key)
        self._parent[key] = key
        self._weight[key] = 0.0  # a group counts (in `groups`) once it weighs something
        return key

    def _union(self, a: str, b: str) -> str:
        if a == b:
            return a
        if b < a:  # a fixed choice of root keeps the structure independent of insertion order
            a, b = b, a
        self._parent[b] = a
        wa = self._weight[a]
        wb = self._weight.pop(b)
        merged = wa if wa >= wb else wb
        self.score += merged - wa - wb
        self._weight[a] = merged
        if wa > 0.0 and wb > 0.0:
            self.groups -= 1
        return a

    def add(self, reporter: str, device: str | None, weight: float) -> None:
        root = self._ensure("r:" + reporter)
        if device:
            root = self._union(root, self._ensure("d:" + device))
        current = self._weight[root]
        if weight > current:
            if current <= 0.0:
                self.groups += 1
            self._weight[root] = weight
            self.score += weight - current

    def merge_from(self, other: Independence) -> None:
        """Absorb another union-find (two clusters becoming one)."""
        for key in other._parent:
            other_root = other._find(key)
            self._union(self._ensure(key), self._ensure(other_root))
        for other_root, weight in other._weight.items():
            root = self._find(other_root)
            current = self._weight[root]
            if weight > current:
                self._weight[root] = weight
                self.score += weight - current
        self.groups = sum(1 for weight in self._weight.values() if weight > 0.0)

    def copy(self) -> Independence:
        clone = Independence()
        clone._parent = dict(self._parent)
        clone._weight = dict(self._weight)
        clone.score = self.score
        clone.groups = self.groups
        return clone
