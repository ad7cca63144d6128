"""The ``superdiff`` command: ``demo`` (offline, CPU) and the subcommands of the other modules."""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

# subcommand -> module with ``add_arguments(parser)`` and ``run(args) -> int``; imported only when used.
COMMANDS = {
    "demo": ("superdiff.demo", "the offline default: toy and digits superpositions written to PNG files"),
    "generate": ("superdiff.generate", "superpose two prompts with Stable Diffusion (or the digits model)"),
    "sweep": ("superdiff.sweep.cli", "evaluation grid: prompt pairs x methods x seeds, scored (accelerate)"),
    "export-hub": ("superdiff.export", "a folder to publish on the Hub whose pipeline.py needs no superdiff"),
}


def main(argv: list[str] | None = None) -> int:
    # diffusers passes huggingface_hub an argument that it deprecates: nothing a user of the CLI can change
    warnings.filterwarnings("ignore", message="The `local_dir_use_symlinks` argument is deprecated")
    parser = argparse.ArgumentParser(
        prog="superdiff", description="SuperDiff: superposition of diffusion models."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    argv = sys.argv[1:] if argv is None else argv
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if argv[:1] == [name]:  # only the chosen subcommand's module is imported
            importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    try:
        return importlib.import_module(COMMANDS[args.command][0]).run(args)
    except KeyboardInterrupt:  # every command writes atomically: what it finished is whole, the rest absent
        print(f"superdiff {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
