"""Class names are folder names, never paths: the one rule a class name meets, in a dataset's class folders, in a
model, and in a sort's output, where photos are copied to `OUT/<class>/`."""

from __future__ import annotations

from typing import Any

UNSURE_FOLDER = "_uncertain"
"""The folder a sort keeps the photos its model was unsure of: no class may take its name."""
FORBIDDEN_IN_NAMES = set('/\\<>:"|?*')
"""Characters a class name may not hold: path separators, and what Windows refuses in a file name."""
NAME_BYTES = 100


def class_name_problem(name: Any) -> str:
    """Why `name` cannot be a class name ('' when it can). A class names a folder: in a dataset, and in a sort's
    output, where photos are copied to `OUT/<class>/`. So one rule holds wherever a model or a dataset is read: a
    single, visible folder name that means the same on every file system, nothing that leads out of a folder."""
    if not isinstance(name, str) or not name:
        return "is not a name"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid text"
    if any(c in FORBIDDEN_IN_NAMES or ord(c) < 32 or ord(c) == 127 for c in name):
        return "holds a path separator or a character file systems refuse"
    if name.startswith("."):
        return "begins with '.' (a hidden or parent folder)"
    if name != name.strip():
        return "begins or ends with a space"
    if size > NAME_BYTES:
        return f"is longer than {NAME_BYTES} bytes"
    if name == UNSURE_FOLDER:
        return "is the name of a sort's folder of unsure photos"
    return ""
