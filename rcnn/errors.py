"""Errors a user can act on: the CLI prints their message as one line, without a traceback."""


class UserError(Exception):
    """Bad input from the user: a wrong path, a malformed file, a mismatched checkpoint.

    The message names the file (and annotation id, where there is one) and what is wrong.
    """


class DatasetError(UserError):
    """A dataset file that cannot be used as it is (missing image, malformed json or xml)."""


class CheckpointError(UserError):
    """A checkpoint or state dict that does not fit the model (missing/unexpected keys, shapes)."""


class OutputError(UserError):
    """An output that cannot be written: a full disk, a read-only folder, a denied permission.

    The message names the file and its folder; the file is left as it was (writes are atomic).
    The CLI exits with code 1 for these (the input was fine), 2 for the other ``UserError``s.
    """
