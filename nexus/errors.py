"""The one exception type for mistakes a user can fix (bad trace, impossible config).

CLIs catch it, print its message and exit with status 2, without a traceback.
"""


class UserError(Exception):
    """A problem with the user's input or configuration, described in plain words."""
