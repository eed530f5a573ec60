"""The one exception type users see: a single line saying what, where, and what to do."""


class VLVError(Exception):
    """A problem with the user's input or setup. The CLI prints ``str(err)`` and exits 2."""


class ParamsError(VLVError):
    """A params file that does not match the schema in vlv.config."""
