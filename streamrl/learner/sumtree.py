"""A vectorised sum tree for proportional prioritized sampling.

Leaves hold priorities; every inner node the sum of its two children. Updating a batch of leaves
and drawing a batch of samples are ``log2(capacity)`` numpy operations on whole arrays, never a
Python loop over samples.
"""

from __future__ import annotations

import numpy as np


class SumTree:
    """Priorities of ``capacity`` slots; sample slots with probability ``p_i / sum(p)``.

    >>> t = SumTree(4)
    >>> t.update(np.array([0, 2]), np.array([1.0, 3.0]))
    >>> t.total
    4.0
    >>> t.find(np.array([0.5, 1.5, 3.9])).tolist()
    [0, 2, 2]
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.size = 1 << max(1, int(np.ceil(np.log2(max(capacity, 2)))))
        self.tree = np.zeros(2 * self.size, dtype=np.float64)

    @property
    def total(self) -> float:
        return float(self.tree[1])

    def get(self, slots: np.ndarray) -> np.ndarray:
        return self.tree[self.size + slots]

    def update(self, slots: np.ndarray, priorities: np.ndarray) -> None:
        """Set the priorities of ``slots`` (later duplicates win) and repair the sums above them."""
        node = np.asarray(slots, dtype=np.int64) + self.size
        self.tree[node] = priorities
        node = np.unique(node >> 1)
        while node[0] >= 1:
            self.tree[node] = self.tree[2 * node] + self.tree[2 * node + 1]
            if node[0] == 1:
                break
            node = np.unique(node >> 1)

    def find(self, mass: np.ndarray) -> np.ndarray:
        """Slots whose cumulative priority interval contains each value of ``mass``."""
        node = np.ones(len(mass), dtype=np.int64)
        mass = np.asarray(mass, dtype=np.float64).copy()
        while node[0] < self.size:
            left = self.tree[2 * node]
            right = mass >= left
            mass -= left * right
            node = 2 * node + right
        slots = node - self.size
        return np.minimum(slots, self.capacity - 1)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` slots by stratified proportional sampling."""
        total = self.total
        seg = total / n
        mass = (np.arange(n) + rng.random(n)) * seg
        return self.find(np.minimum(mass, np.nextafter(total, 0)))
