"""Evaluation sweeps: prompt pairs × methods × seeds, sampled across processes with accelerate and scored.

superdiff sweep --model digits                                    # offline, CPU, one process
accelerate launch --multi_gpu --num_processes 2 -m superdiff.sweep --model digits   # 2 CPU processes
accelerate launch --num_processes 8 -m superdiff.sweep --pairs paper   # SD v1-4 on 8 GPUs, CLIP scores
"""

import importlib

from .plan import METHODS, Item, load_pairs, parse_methods, parse_seeds, plan

# imported on first use: `python -m superdiff.sweep` reads its options (and a Ctrl-C stops it with one line)
# before torch and accelerate load
LAZY = {"SweepConfig": ".run", "run_sweep": ".run", "summarize": ".summary", "write_summary": ".summary"}

__all__ = ["METHODS", "Item", "load_pairs", "parse_methods", "parse_seeds", "plan", *LAZY]


def __getattr__(name: str):
    if name in LAZY:
        return getattr(importlib.import_module(LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
