"""Torch settings shared by the CPU-sized parts of the kit (digits, toy, widgets)."""

from __future__ import annotations

from contextlib import contextmanager

import torch


def gen(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``: the same numbers on every machine."""
    return torch.Generator().manual_seed(seed)


@contextmanager
def one_thread():
    """Run torch on one thread: tiny tensors gain nothing from more, and on shared CPUs they lose 10–30×."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def math_attention():
    """Attention's math kernel, whose backward can be differentiated again (flash and memory-efficient
    kernels have no double backward)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3
        return torch.backends.cuda.sdp_kernel(
            enable_flash=False, enable_mem_efficient=False, enable_math=True
        )
    return sdpa_kernel(SDPBackend.MATH)
