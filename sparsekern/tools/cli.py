"""The `sparsekern` command (also `python -m sparsekern`): demo, bench, inspect; --version."""
import argparse
import os
import sys
from typing import List, Optional


def _demo(argv: List[str]) -> int:
    from . import demo
    return demo.main(argv) or 0


def _bench(argv: List[str]) -> int:
    from . import bench_cli
    return bench_cli.main(argv)


def _inspect(argv: List[str]) -> int:
    """`sparsekern inspect FILE`: prints the table; exit status 1 with the reason for a bad file."""
    from ..io import inspect_file

    parser = argparse.ArgumentParser(prog="sparsekern inspect",
                                     description="Per-layer table of a file written by sparsekern.save "
                                                 "(reads only its validated header).")
    parser.add_argument("file")
    args = parser.parse_args(argv)
    try:
        print(inspect_file(args.file))
    except (ValueError, FileNotFoundError) as e:
        print(f"sparsekern inspect: {e}", file=sys.stderr)
        return 1
    return 0


COMMANDS = {
    "demo": (_demo, "prune, fine-tune and sparsify an MLP on the bundled digits data; print accuracy and speed"),
    "bench": (_bench, "time sparsekern against dense and torch.sparse on chosen layer shapes"),
    "inspect": (_inspect, "per-layer table (format, shape, sparsity, bytes) of a file written by sparsekern.save"),
}


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="sparsekern", description="Pruned PyTorch models made faster.",
        epilog="Run 'sparsekern COMMAND --help' for a command's options.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND",
                        help="; ".join(f"{name}: {text}" for name, (_, text) in COMMANDS.items()))
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        # Only the first word is parsed here: an option before the command was reported as
        # "the following arguments are required: COMMAND", even with a command after it.
        parser.error(f"unrecognized option {argv[0]}: the command comes first, its options after it "
                     "('sparsekern COMMAND --help' lists them)")
    args, rest = parser.parse_known_args(argv[:1])
    run, _ = COMMANDS[args.command]
    try:
        return run(rest + argv[1:])
    except BrokenPipeError:
        # The reader left (`sparsekern inspect FILE | head`): no traceback, and no second
        # error when Python flushes stdout at exit (the recipe of Python's signal docs).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
