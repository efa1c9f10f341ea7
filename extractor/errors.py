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


def one_line(text, limit: int | None = None) -> str:
    """`text` (or an exception) as one line for a message: whitespace squashed to single spaces;
    with `limit`, cut to at most that many characters ending with "..."."""
    text = " ".join(str(text).split())
    if limit is not None and len(text) > limit:
        return text[:limit - 3] + "..."
    return text


def failure(exc: CbmError | KeyboardInterrupt) -> tuple[str, int]:
    """How a command ends on this exception: the one line for stderr and the exit code."""
    if isinstance(exc, KeyboardInterrupt):
        return "cbm: interrupted", 130
    return f"cbm: error: {exc}", exc.exit_code
