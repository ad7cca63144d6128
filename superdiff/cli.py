"""The ``superdiff`` command: ``demo`` (offline, CPU) and the subcommands of the other modules."""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from tqdm.auto import tqdm

from . import __version__

# subcommand -> module with ``add_arguments(parser)`` and ``run(args) -> int``; imported only when used.
COMMANDS = {
    "demo": ("superdiff.demo", "the offline default: toy and digits superpositions written to PNG files"),
    "generate": ("superdiff.generate", "superpose two prompts with Stable Diffusion (or the digits model)"),
    "sweep": ("superdiff.sweep.cli", "evaluation grid: prompt pairs x methods x seeds, scored (accelerate)"),
    "export-hub": ("superdiff.export", "a folder to publish on the Hub whose pipeline.py needs no superdiff"),
}


def is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def join_negative_values(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """['--lift', '-1e6'] as ['--lift=-1e6']: argparse reads a negative number in e-notation as an option."""
    takes_value = {s for a in parser._actions if a.nargs is None for s in a.option_strings}
    joined = []
    for token in argv:
        if joined and joined[-1] in takes_value and token.startswith("-") and is_number(token):
            joined[-1] = f"{joined[-1]}={token}"
        else:
            joined.append(token)
    return joined


def show_warning(command: str):
    """Python's warnings as the command's own one-line messages (above any progress bar, not inside it)."""

    def show(message, category, filename, lineno, file=None, line=None):
        tqdm.write(f"superdiff {command}: warning: {message}", file=sys.stderr if file is None else file)

    return show


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return run_command(argv)
    except KeyboardInterrupt:  # each command writes atomically: what it finished is whole, the rest gone
        command = f" {argv[0]}" if argv[:1] and argv[0] in COMMANDS else ""
        print(f"superdiff{command}: interrupted", file=sys.stderr)
        return 130


def run_command(argv: list[str]) -> int:
    """Parse argv (importing only the chosen subcommand's module) and run that subcommand."""
    parser = argparse.ArgumentParser(
        prog="superdiff", description="SuperDiff: superposition of diffusion models."
    )
    parser.add_argument("--version", action="version", version=f"superdiff-kit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if argv[:1] == [name]:  # only the chosen subcommand's module is imported
            importlib.import_module(module).add_arguments(p)
            argv = join_negative_values(argv, p)
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        # diffusers passes huggingface_hub an argument it deprecates: nothing a user of the CLI can change
        warnings.filterwarnings("ignore", message="The `local_dir_use_symlinks` argument is deprecated")
        warnings.showwarning = show_warning(args.command)
        return importlib.import_module(COMMANDS[args.command][0]).run(args)


if __name__ == "__main__":
    sys.exit(main())
