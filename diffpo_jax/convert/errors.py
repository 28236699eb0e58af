"""The one error type of the converter: bad input named by file, tensor or key, with the fix."""


class ConversionError(ValueError):
    """Raised for a checkpoint/config the converter cannot read (message names file + tensor/key)."""
