"""Errors in what the user asked for, as opposed to bugs.

train.py prints their message, which names the problem and the fix, without a traceback.
"""


class UserError(ValueError):
  """A config value, data set, checkpoint or launch setting that cannot work as given."""
