"""How a name from outside (a subject id, an experiment name, a folder's name) becomes a path.

Subject ids come from folder names and manifest rows, experiment names from the
command line; the commands write each under its name inside an output folder
(``results/<name>/<subject>/``, a score file ``<subject>.json``). ``path_name``
is the one gate they pass: a name that could leave the output folder, or land
where another name or the run's own files are, is refused before any work.
"""

import re
import unicodedata

from tversky_keras.data.errors import DataError

_SEPARATORS = ("/", "\\")


def portable_name(name):
    """``name`` with every character but ``A-Z a-z 0-9 . _ -`` replaced by ``_``.

    The cache's folders start with it (their key tells subjects apart), and
    ``path_name`` refuses two names that agree in it, case ignored.
    """
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _key(name):
    """What two names that would share a place agree in."""
    return portable_name(unicodedata.normalize("NFC", name)).casefold()


def _problem(name):
    """Why ``name`` cannot be one file or folder name, or ``None``."""
    if not name.strip():
        return "it is empty"
    if name in (".", ".."):
        return "it is the folder itself or the one above"
    if name.startswith(_SEPARATORS):
        return "it is an absolute path"
    if re.match(r"[A-Za-z]:", name):
        return f"it names the drive {name[:2]}"
    separators = [s for s in _SEPARATORS if s in name]
    if separators:
        return f"it holds the path separator {separators[0]}"
    control = [c for c in name if unicodedata.category(c) in ("Cc", "Cf")]
    if control:
        return f"it holds the control character U+{ord(control[0]):04X}"
    return None


def path_name(name, what, where=None, reserved=(), taken=None):
    """``name`` unchanged, once it is safe as one file or folder name inside an output folder.

    Refused: an empty or blank name, ``.`` and ``..``, an absolute path, a path
    separator (``/`` or ``\\``), a control character, and a name that matches
    one of ``reserved`` or ``taken`` once case and the characters
    ``portable_name`` replaces are ignored: a file system that ignores case
    gives the two one folder, and the cache's folder names cannot tell them apart.

    Args:
        name: the name from outside.
        what: how a message calls it, e.g. ``"line 3: subject"`` or ``"--name"``.
        where: the manifest or folder it comes from (the ``DataError``'s path), or ``None``.
        reserved: names the caller's own files or folders have beside it (``run``).
        taken: a dict the caller keeps over a set of names; ``name`` is added to it.

    Returns:
        ``name``.

    Raises:
        DataError: naming ``where``, ``what``, the name and the reason, in one line.
    """
    problem = _problem(name)
    key = _key(name)
    if problem is None:
        clash = [r for r in reserved if _key(r) == key]
        if clash:
            problem = f"it is the name of the output's own {clash[0]!r}"
        elif taken is not None and key in taken:
            problem = (f"it collides with {taken[key]}: names equal but for case, or for "
                       f"characters outside A-Z a-z 0-9 . _ -, cannot be told apart on every "
                       f"file system")
    if problem is not None:
        raise DataError(where, f"{what} {name!r} cannot be a file or folder name: {problem}")
    if taken is not None:
        taken[key] = f"{what} {name!r}"
    return name
