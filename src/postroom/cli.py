"""The `postroom` command: parse arguments, call the library, print. Nothing else lives here.

Exit codes: 0 success; 1 done, but some input had problems (each printed as path:line:
message); 2 usage or configuration error, nothing done.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from postroom import __version__
from postroom.build import BuildReport, SiteBuilder
from postroom.config import Settings, find_config, load_settings
from postroom.errors import PostroomError, Problem
from postroom.sitefolder import create_site

EXIT_OK, EXIT_PROBLEMS, EXIT_ERROR = 0, 1, 2
F = TypeVar("F", bound=Callable[..., Any])


class Context:
    """What every command gets: where the config is and how much to say."""

    def __init__(self, config: Path | None, verbosity: int) -> None:
        self.config_path, self.verbosity = config, verbosity

    def settings(self) -> Settings:
        return load_settings(find_config(self.config_path, os.environ))

    def say(self, message: str) -> None:
        if self.verbosity >= 0:
            click.echo(message)


def common_options(command: F) -> F:
    """Add --config/--quiet/--verbose to a command, so they work after the command name too."""

    @click.option("--config", "-c", "config", type=click.Path(path_type=Path), default=None,
                  help="Config file (default: $POSTROOM_CONFIG, ./postroom.toml, built-ins).")
    @click.option("--quiet", "-q", is_flag=True, help="Print only problems and errors.")
    @click.option("--verbose", "-v", is_flag=True, help="Print what is done, file by file.")
    @click.pass_context
    @functools.wraps(command)
    def wrapper(ctx: click.Context, config: Path | None, quiet: bool, verbose: bool,
                **kwargs: Any) -> Any:
        parent: Context | None = ctx.obj
        config = config or (parent.config_path if parent else None)
        verbosity = -1 if quiet else 1 if verbose else (parent.verbosity if parent else 0)
        _setup_logging(verbosity)
        try:
            return command(Context(config, verbosity), **kwargs)
        except PostroomError as err:
            click.echo(f"postroom: {err}", err=True)
            sys.exit(EXIT_ERROR)

    return wrapper  # type: ignore[return-value]


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    # Only postroom's own loggers get chattier; libraries' debug output is noise to a user.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s",
                        force=True)
    logging.getLogger("postroom").setLevel(level)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "-c", type=click.Path(path_type=Path), default=None,
              help="Config file (default: $POSTROOM_CONFIG, ./postroom.toml, built-ins).")
@click.option("--quiet", "-q", is_flag=True, help="Print only problems and errors.")
@click.option("--verbose", "-v", is_flag=True, help="Print what is done, file by file.")
@click.version_option(__version__, prog_name="postroom")
@click.pass_context
def main(ctx: click.Context, config: Path | None, quiet: bool, verbose: bool) -> None:
    """Feeds and email digests for a folder of Markdown posts."""
    ctx.obj = Context(config, -1 if quiet else 1 if verbose else 0)


def print_problems(problems: list[Problem]) -> None:
    for problem in problems:
        click.echo(str(problem), err=True)


@main.command()
@common_options
def build(ctx: Context) -> None:
    """Scan the posts and write the feeds that changed."""
    settings = ctx.settings()
    report = SiteBuilder(settings).build(datetime.now(UTC))
    print_problems(report.problems)
    ctx.say(_summary(report, settings))
    if ctx.verbosity > 0:
        for name in report.written:
            click.echo(f"  wrote {settings.output_dir / name}")
        for name in report.removed:
            click.echo(f"  removed {settings.output_dir / name}")
    sys.exit(EXIT_PROBLEMS if report.problems else EXIT_OK)


def _summary(report: BuildReport, settings: Settings) -> str:
    problems = f", {len(report.problems)} problem(s)" if report.problems else ""
    removed = f", {len(report.removed)} removed" if report.removed else ""
    return (
        f"{report.published} published posts; {len(report.feeds)} feeds in "
        f"{settings.output_dir}: {len(report.written)} written, "
        f"{len(report.unchanged)} unchanged{removed}{problems}"
    )


@main.command()
@common_options
def check(ctx: Context) -> None:
    """Report every problem in the posts; write nothing. Exit 1 if there is any."""
    settings = ctx.settings()
    report = SiteBuilder(settings).build(datetime.now(UTC), write=False)
    print_problems(report.problems)
    ctx.say(f"{report.published} published posts, {len(report.problems)} problem(s)")
    sys.exit(EXIT_PROBLEMS if report.problems else EXIT_OK)


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
@common_options
def init(ctx: Context, folder: Path) -> None:
    """Create a new site folder: a config, a sample post and the templates."""
    created = create_site(folder, today=datetime.now(UTC).date())
    for path in created:
        ctx.say(f"created {path}")
    ctx.say(f"next: cd {folder} && postroom build")


if __name__ == "__main__":  # pragma: no cover
    main()
