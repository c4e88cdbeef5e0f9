"""``UserError``, the one exception type for bad user input (defined in ``data_pipeline.errors``, the lowest
package that raises it, so that no import points up the package graph)."""

from data_pipeline.errors import UserError

__all__ = ["UserError"]
