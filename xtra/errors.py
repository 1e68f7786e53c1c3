"""The user-facing error of the study layer's core: one line naming the file, key or value, and what is
allowed. Its own module so that the study directory's owner and the lease can both raise it."""


class StudyError(ValueError):
    """A one-line, user-facing error about a study: its file, a preset, a --set, or its directory."""
