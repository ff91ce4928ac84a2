"""The one base class of the errors a person can mend: a head file, a calibration file, a
recording, arguments, a part that is missing.

The command line catches this class alone and prints the message (exit status 2); anything else
is a bug and keeps its traceback. It lives in a module of its own, importing nothing, so that
``glass-inspect --help`` and a command's parser load none of the runtime (Numba, ONNX Runtime,
image libraries) just to be able to name the errors they catch.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from a person: the message says what, where and what was expected."""
