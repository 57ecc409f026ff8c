"""How the `embedpipe` command ends: every user mistake is one `error: …` line on stderr.

Exit codes: 0 success, 1 a mistake in the inputs (`EmbedpipeError`, an unreadable file, a bad
option value found while running), 2 a usage error found while parsing (unknown option, missing
argument, wrong type), 130 interrupted. A traceback is left only for bugs.
"""

from __future__ import annotations

import sys
from typing import Any

import typer

from embedpipe.errors import EmbedpipeError, one_line

try:  # typer >= 0.23 vendors click; older releases use the click package
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as click_exceptions

USAGE_EXIT = 2
ERROR_EXIT = 1
INTERRUPTED_EXIT = 130


def error_line(message: str, hint: str | None = None) -> str:
    text = one_line(message.strip().removeprefix("error: "))
    return f"error: {text}" + (f" ({hint})" if hint else "")


def _usage_hint(exc: Any) -> str:
    ctx = getattr(exc, "ctx", None)
    path = ctx.command_path if ctx is not None else "embedpipe"
    return f"see `{path} --help`"


def _report(message: str, hint: str | None = None) -> None:
    print(error_line(message, hint), file=sys.stderr)


def run_cli(app: typer.Typer, args: list[str], prog_name: str = "embedpipe") -> int:
    """Run the CLI on `args`; returns the exit code after printing any error as one line."""
    command = typer.main.get_command(app)
    try:
        result = command.main(args, prog_name=prog_name, standalone_mode=False)
    except click_exceptions.UsageError as exc:
        _report(exc.format_message().removeprefix("Invalid value: "), _usage_hint(exc))
        return USAGE_EXIT
    except click_exceptions.ClickException as exc:
        _report(exc.format_message())
        return exc.exit_code or ERROR_EXIT
    except typer.Abort:
        _report("interrupted")
        return INTERRUPTED_EXIT
    except KeyboardInterrupt:
        _report("interrupted")
        return INTERRUPTED_EXIT
    except EmbedpipeError as exc:
        # an error that knows the CLI spelling of the argument it names (e.g. --dim for dim) says so
        cli_message = getattr(exc, "cli_message", None)
        _report(cli_message() if callable(cli_message) else str(exc))
        return ERROR_EXIT
    except BrokenPipeError:
        # `embedpipe … | head`: the reader left; nothing to say
        sys.stderr.close()
        return ERROR_EXIT
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError) as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        _report(f"{where}{exc.strerror or exc}", "check the path")
        return ERROR_EXIT
    return result if isinstance(result, int) else 0
