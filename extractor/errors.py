"""The two kinds of failure a user may see, and the exit codes scripts can trust.

Exit codes of every `cbm` command:
  0    success
  1    the work failed (a remote service, a host, a scene): the message says what and where
  2    bad input or configuration: the message names the input and the fix
  130  interrupted (Ctrl-C)

Both exceptions carry a one-line message that is printed as is, without a traceback.
Messages must never contain a secret (passwords, keys, tokens).
"""


class CbmError(Exception):
    """The work failed for a reason outside the program (service down, host unreachable...)."""

    exit_code = 1


class UserError(CbmError):
    """Bad input: a file, an argument, a setting. The message names it and says how to fix it."""

    exit_code = 2
