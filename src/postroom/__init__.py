"""postroom: feeds and email digests for a folder of Markdown posts."""

__version__ = "0.1.0"
