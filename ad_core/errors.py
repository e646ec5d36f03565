"""The errors a user can cause and fix, kept free of heavy imports so that the CLI can catch them cheaply."""


class ConfigError(ValueError):
    """A method configuration is invalid (unknown field, wrong type, out-of-range value, unknown preset)."""


class DatasetError(ValueError):
    """A dataset on disk is not what we expected. The message names the path and the fix."""


class WeightsError(RuntimeError):
    """Backbone weights could not be loaded. The message says how to supply them."""


class AnnotationError(ValueError):
    """An annotation cannot be stored, read or imported as given (an image outside the dataset, a mask of the
    wrong size, ...). The message says what is wrong and how to fix it."""
