from . import errors
