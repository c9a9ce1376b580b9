"""The Jinja2 environment: a site's own templates/ first, then postroom's defaults."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from jinja2 import (
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    StrictUndefined,
    select_autoescape,
)
from jinja2 import (
    TemplateError as JinjaError,
)

from postroom.errors import TemplateError

DEFAULT_TEMPLATES = Path(__file__).parent / "default_templates"
EMAIL_TEMPLATES = (
    "digest.html", "digest.txt", "digest_subject.txt",
    "confirm.html", "confirm.txt", "confirm_subject.txt",
)


def template_environment(site_templates: Path | None) -> Environment:
    """Given the site's templates folder (may be missing), return the checked environment.

    A site overrides a default by putting a file of the same name in its folder.
    """
    folders = [site_templates] if site_templates and site_templates.is_dir() else []
    folders.append(DEFAULT_TEMPLATES)
    environment = Environment(
        loader=ChoiceLoader([FileSystemLoader(folder) for folder in folders]),
        # HTML is escaped; plain text (.txt) is not, because it is not HTML.
        autoescape=select_autoescape(["html", "xml", "xsl"], default_for_string=False),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    check_templates(environment, EMAIL_TEMPLATES)
    return environment


def check_templates(environment: Environment, names: Iterable[str]) -> None:
    """Load every named template now, so a missing or broken one fails at start, by name."""
    for name in names:
        try:
            environment.get_template(name)
        except JinjaError as err:
            line = getattr(err, "lineno", None)
            where = f"{name}:{line}" if line else name
            raise TemplateError(f"template {where}: {err.message or err}") from None


def render(environment: Environment, name: str, context: dict[str, Any]) -> str:
    """Render a template by name, turning Jinja's errors into a TemplateError naming it."""
    try:
        return environment.get_template(name).render(context)
    except JinjaError as err:
        raise TemplateError(f"template {name}: {err.message or err}") from err
    except (ArithmeticError, LookupError, TypeError, ValueError, AttributeError) as err:
        # An expression of a site's own template that fails as it renders (`1 // 0`).
        raise TemplateError(f"template {name}: {type(err).__name__}: {err}") from err
