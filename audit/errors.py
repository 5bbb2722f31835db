"""The one error type that commands turn into a single line and exit code 2."""


class AuditError(Exception):
    """Bad input or an unusable state: the message says what is wrong and what to do."""
