"""The errors corenet raises for bad input, so that callers can catch them by kind."""


class ShapeError(ValueError):
    """An array has the wrong number of dimensions, size or feature count."""


class DTypeError(TypeError):
    """An array has a dtype the layer cannot take (integers, objects, mixed floats)."""


class PluginError(RuntimeError):
    """Plugins conflict, or a plugin asked for cannot be found or loaded."""


class MissingClassError(PluginError, AttributeError):
    """``corenet.layers.X`` (or ``corenet.losses.X``) for a class no plugin registers:
    a PluginError that names a disabled or failed plugin which may provide it, and an
    AttributeError, as a missing module attribute is (hasattr stays False)."""


class ModelFileError(ValueError):
    """A model file is malformed: not a corenet model, or arrays and config that do not
    agree. The message names the file and what is wrong with it."""


class StateDictError(ValueError):
    """A state dict does not fit the model: missing or unexpected keys, or shapes that
    differ. The message lists every problem and the model's keys."""
