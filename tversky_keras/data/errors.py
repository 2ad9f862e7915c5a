"""The one error type for bad input data."""


class DataError(ValueError):
    """Input data that cannot be used; the message names the file and the problem.

    Args:
        path: the offending file or folder (may be ``None`` for in-memory data).
        problem: what is wrong with it, in words a user can act on.
    """

    def __init__(self, path, problem):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)
