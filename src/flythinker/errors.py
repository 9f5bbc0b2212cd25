"""The one exception type for bad user input.

Library code raises :class:`UserError` (or a subclass) for anything the user can fix —
a bad file, a missing field, a mismatched model pair. The command line turns it into
one line on stderr and exit code 2 (a traceback only with ``--debug``).
"""


class UserError(ValueError):
    """Input the user can fix; the message names what is wrong and where (file, row, key).

    >>> raise UserError("data.json: row 3: field 'output' is empty")
    Traceback (most recent call last):
    flythinker.errors.UserError: data.json: row 3: field 'output' is empty
    """
