"""The one exception type that every package raises for bad user input.

The CLI prints a ``UserError`` as one line (``semcoder CMD: error: MESSAGE``) and exits 1; anything
else is a bug and keeps its traceback.  Messages name the file, line or key and what is wrong.
"""


class UserError(ValueError):
    """Bad input (a file, a config key, an argument) described in one line."""
