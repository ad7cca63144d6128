"""Evaluation sweeps: prompt pairs × methods × seeds, sampled across processes with accelerate and scored.

superdiff sweep --model digits                                    # offline, CPU, one process
accelerate launch --multi_gpu --num_processes 2 -m superdiff.sweep --model digits   # 2 CPU processes
accelerate launch --num_processes 8 -m superdiff.sweep --pairs paper   # SD v1-4 on 8 GPUs, CLIP scores
"""

from .plan import METHODS, Item, load_pairs, parse_methods, parse_seeds, plan
from .run import SweepConfig, run_sweep
from .summary import summarize, write_summary

__all__ = [
    "METHODS",
    "Item",
    "SweepConfig",
    "load_pairs",
    "parse_methods",
    "parse_seeds",
    "plan",
    "run_sweep",
    "summarize",
    "write_summary",
]
