"""The installed import name of this project: ``implicit_ssm_eval.model_adapters``, ``.tasks``, ``.harness``.

The repository keeps its three folders at the top (``model_adapters/``, ``tasks/``, ``harness/``), but a user's
environment must not gain packages called ``tasks`` or ``harness``: an lm-eval user very often has a ``tasks/``
folder of their own. A wheel installs the folders under this package; in a source checkout (an editable
install, or running from the repository root) they sit beside it, so the package path points there too.
"""

import os as _os

_here = _os.path.dirname(_os.path.abspath(__file__))
if not _os.path.isdir(_os.path.join(_here, "model_adapters")):  # a source checkout: the folders are siblings
    __path__.append(_os.path.dirname(_here))
