"""Fixtures of the serving tests: one torch thread (the service runs one per process; CI has 2 cores)."""

from __future__ import annotations

import torch

torch.set_num_threads(1)
