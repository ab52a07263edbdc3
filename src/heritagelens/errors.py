"""The one base of every error the tool reports to its user: bad input, a missing or foreign file, a folder it cannot
write. The command line catches it in one place and prints it as one line; anything else is a bug."""


class HeritageLensError(Exception):
    """A problem with what the user gave (a path, a file, a setting), described in one line that names it."""
