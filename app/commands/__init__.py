"""One module per `specvoice` subcommand: each has add_arguments(parser) and run(args, config) -> int."""


class UsageError(Exception):
    """Bad input from the user (a file, a flag, the environment): one line on stderr, exit code 2."""
