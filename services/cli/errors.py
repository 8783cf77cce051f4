"""The CLI's one mapping from an exception to one line for the user.

Every ``lab`` command (and every ``lab job`` / ``lab lit`` sub-command) is
registered through :class:`LabTyper`, which wraps it in :func:`one_line_errors`.
So a command raises what it means (a LabError from any layer, an OSError from
the disk, ``fail("...")`` for bad input) and this module alone decides how that reads:

    LabError                  its message (any layer: bus, agents, services); what NATS said or that it
                              did not answer arrives so too (bus/ translates nats-py's errors: bus.errors.BusFailure)
    OSError, UnicodeError     services.common.errors.describe_os_error: which file or setting, and why
    pydantic ValidationError  the model and its first bad field

Anything else is a bug and keeps its traceback. ``lab`` prints ``lab: error: ...``;
the sub-commands keep their shorter ``error: ...`` prefix.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar, cast

import typer
from pydantic import ValidationError

from bus.errors import LabError
from services.cli.terminal import SafeConsole

F = TypeVar("F", bound=Callable[..., Any])
# What a user can act on; anything else is a bug and keeps its traceback.
KNOWN: tuple[type[BaseException], ...] = (LabError, OSError, UnicodeError, ValidationError)
_err = SafeConsole(stderr=True, highlight=False)  # error lines carry outside text (crash reasons, names)


def _one(text: str) -> str:
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def describe(error: BaseException) -> str | None:
    """One line for an error in KNOWN; None for any other (a bug, which should keep its traceback)."""
    if isinstance(error, LabError):  # before OSError: the bus's BusTimeout is a builtin TimeoutError too
        return _one(str(error)) or type(error).__name__
    if isinstance(error, (OSError, UnicodeError)):  # the environment, not the code: name the file or setting at fault
        from services.common.config import lab_home
        from services.common.errors import describe_os_error

        return _one(describe_os_error(error, lab_home())) or type(error).__name__
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "value"
        more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
        return f"invalid {error.title}: {where}: {first['msg']}{more}"
    return None


def one_line_errors(prefix: str = "lab: error: ") -> Callable[[F], F]:
    """Wrap a command: an error :func:`describe` knows prints as ``prefix + one line`` and exits 2."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except KNOWN as e:
                _err.print(f"{prefix}{describe(e)}", markup=False, soft_wrap=True)
                raise typer.Exit(2) from None

        return cast(F, command)  # functools.wraps keeps fn's signature at run time

    return wrap


class UsageError(LabError):
    """Bad input on the command line: one line, exit 2."""


def fail(message: str) -> NoReturn:
    """Refuse bad input: the command's wrapper prints it as one line and exits 2."""
    raise UsageError(message)


class LabTyper(typer.Typer):
    """A Typer whose every command maps errors through :func:`one_line_errors`, so none is forgotten."""

    def __init__(self, *args: Any, error_prefix: str = "lab: error: ", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.error_prefix = error_prefix

    def command(self, *args: Any, **kwargs: Any) -> Callable[[F], F]:
        register = super().command(*args, **kwargs)

        def decorator(fn: F) -> F:
            register(one_line_errors(self.error_prefix)(fn))
            return fn

        return decorator


def _nearest(word: str, choices: list[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return found[0] if found else None


def usage_line(error: Exception) -> str:
    """One line for a click/typer usage error, with the nearest valid option or command: never typer's boxed five lines."""
    from typer._click import exceptions as click  # typer >= 0.29 carries its own click

    ctx = getattr(error, "ctx", None)
    where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    if isinstance(error, click.NoSuchOption):
        options = [o for p in (ctx.command.params if ctx else []) for o in (*p.opts, *p.secondary_opts) if o.startswith("-")]
        near = _nearest(error.option_name, options) or next(iter(error.possibilities or []), None)
        return f"no such option {error.option_name}" + (f"; did you mean {near}?" if near else "") + where
    message = error.format_message() if isinstance(error, click.ClickException) else str(error)
    if message.startswith("No such command") and ctx is not None and hasattr(ctx.command, "commands"):
        name = message.split("'")[1] if "'" in message else ""
        command = _nearest(name, list(ctx.command.commands))
        return f"no such command {name}" + (f"; did you mean {command}?" if command else "") + where
    first = _one(message)
    return (first[:1].lower() + first[1:]).rstrip(".") + where


def run_app(app: typer.Typer, prefix: str = "lab: error: ") -> None:
    """Run the CLI: a usage error (unknown option or command, bad value) is one line and exit 2."""
    import sys

    from typer._click import exceptions as click  # typer >= 0.29 carries its own click

    try:
        code = app(standalone_mode=False, prog_name="lab")
    except click.NoArgsIsHelpError as e:
        print(e.format_message(), file=sys.stderr)
        sys.exit(2)
    except click.ClickException as e:
        _err.print(f"{prefix}{usage_line(e)}", markup=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
