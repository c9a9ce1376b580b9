"""`postroom init`: lay out a new site folder with a config, a sample post and the templates."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

from postroom.errors import PostroomError

DEFAULT_TEMPLATES = Path(__file__).parent / "default_templates"

STARTER_CONFIG = """\
# postroom site configuration. Every key is documented in config.example.toml of the
# postroom repository; paths are relative to this file.

[site]
title = "My blog"
subtitle = ""
base_url = "https://blog.example.org"   # the blog's public address
language = "en"
timezone = "UTC"                         # naive post dates are in this zone
post_url = "{base_url}/posts/{slug}/"    # placeholders: base_url slug year month day

[site.author]
name = "Your Name"
email = "you@example.org"

[paths]
posts = "posts"
output = "public"
templates = "templates"

[feeds]
formats = ["atom", "rss", "json"]
entries = 20
content = "full"      # or "summary"
per_tag = true
"""

SAMPLE_POST = """\
---
title: Hello, world
date: {today}
summary: The first post of this blog, written to show what a post looks like.
tags: [meta]
---

This is the first post. Its front matter (between the `---` lines) says its
title, date, summary and tags; the rest is Markdown.

<!--more-->

## What next

Write a new file in `posts/`, run `postroom build`, and the feeds follow.
"""


def create_site(folder: Path, today: date) -> list[Path]:
    """Given an empty or missing folder, create a site in it; return the files created."""
    if folder.exists() and not folder.is_dir():
        raise PostroomError(f"{folder}: is a file, not a folder; choose a new or empty folder")
    if folder.exists() and any(folder.iterdir()):
        raise PostroomError(f"{folder}: folder is not empty; choose a new or empty folder")
    (folder / "posts").mkdir(parents=True, exist_ok=True)
    config = folder / "postroom.toml"
    config.write_text(STARTER_CONFIG, encoding="utf-8")
    post = folder / "posts" / f"{today:%Y-%m-%d}-hello-world.md"
    post.write_text(SAMPLE_POST.format(today=f"{today:%Y-%m-%d}"), encoding="utf-8")
    created = [config, post]
    templates = folder / "templates"
    templates.mkdir()
    for source in sorted(DEFAULT_TEMPLATES.iterdir()):
        if source.is_file() and not source.name.startswith((".", "__")):
            shutil.copyfile(source, templates / source.name)
            created.append(templates / source.name)
    return created
