"""One module per `specvoice` subcommand: each has add_arguments(parser) and run(args, config) -> int."""


class UsageError(Exception):
    """Bad input from the user (a file, a flag, the environment): one line on stderr, exit code 2."""


SKILLS = ("events", "orders", "call_center")


def add_skill_argument(parser) -> None:
    """`--skill NAME` (repeatable): turn a built-in skill on, as `[skills] NAME = true` does."""
    parser.add_argument("--skill", action="append", default=[], choices=SKILLS, metavar="NAME",
                        help=f"turn a built-in skill on (repeatable): {', '.join(SKILLS)} (docs/tools.md)")  # fmt: skip


def apply_skills(args, config) -> None:
    for name in getattr(args, "skill", None) or []:
        config.set(f"skills.{name}", True)


def install_skills(assistant) -> None:
    """The enabled skills' tools on the assistant (every conversation gets them)."""
    from app.skills import install_skills as install

    added = install(assistant)
    if added:
        print(f"skills: tools {', '.join(added)}", flush=True)
