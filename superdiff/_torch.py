"""Torch settings shared by the CPU-sized parts of the kit (digits, toy, widgets)."""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def one_thread():
    """Run torch on one thread: tiny tensors gain nothing from more, and on shared CPUs they lose 10–30×."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
