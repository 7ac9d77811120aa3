"""One exception type per kind of failure; the CLI turns them into messages and exit codes."""

from __future__ import annotations


class LivengError(Exception):
    """Base class. ``exit_code`` is what the command line exits with."""

    exit_code = 1


class RecipeError(LivengError):
    """The recipe is wrong: the message names the file and the key."""

    exit_code = 2


class UsageError(LivengError):
    """The command line or an input file is wrong."""

    exit_code = 2


class PreflightError(LivengError):
    """The host lacks something the build needs; the message says how to get it."""

    exit_code = 3


class CommandError(LivengError):
    """An external command failed."""

    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr
        tail = "\n".join(stderr.strip().splitlines()[-20:])
        super().__init__(f"command failed with exit code {returncode}: {' '.join(argv)}\n{tail}")


class BuildError(LivengError):
    """A build step could not do its work (the message says which and why)."""


class ImageError(LivengError):
    """A file given as an image is not a liveng image or is damaged."""

    exit_code = 2


class FlashError(LivengError):
    """Writing or verifying a disk failed (the message says where and what that means)."""


class UpdateBundleError(LivengError):
    """An update bundle or channel index could not be made, or did not pass its own check."""
