"""One exception type per kind of user mistake, each with a message a GIS user understands.

Every error the engine raises on purpose derives from RsgenError, so the QGIS doors can show it in the
message bar (and the CLI print it) instead of a traceback.
"""


class RsgenError(Exception):
    """Base of every error the engine raises on purpose."""


class ExtentError(RsgenError):
    """The extent is empty, has no area, or lies outside the CRS's valid area."""


class CrsError(RsgenError):
    """The CRS cannot be read or has no usable transformation to geographic coordinates."""


class PixelBudgetError(RsgenError):
    """The output would exceed the configured pixel budget for a single request."""


class ParameterError(RsgenError):
    """A generation parameter (steps, guidance, sampler, size...) is out of range."""


class ModelPackageError(RsgenError):
    """A model package is missing, corrupt, or does not match its manifest."""


class ConditionError(RsgenError):
    """A condition (layout, mask, guide image, boxes) does not fit the request or the model."""


class OutputError(RsgenError):
    """The output file cannot be written where the user asked."""


class Cancelled(RsgenError):
    """The user cancelled the generation; nothing was written."""
