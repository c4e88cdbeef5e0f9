"""The one exception type that every package raises for bad user input.

It lives here, in the lowest package that needs it, so that imports only point down the project's
graph (``eval``, ``launch`` -> ``semcoder_jax`` -> ``data_pipeline`` -> ``sandbox``); ``semcoder_jax.errors``
re-exports it.  The CLI prints a ``UserError`` as one line (``semcoder CMD: error: MESSAGE``) and exits 1;
anything else is a bug and keeps its traceback.  Messages name the file, line or key and what is wrong.
"""


class UserError(ValueError):
    """Bad input (a file, a config key, an argument) described in one line."""
