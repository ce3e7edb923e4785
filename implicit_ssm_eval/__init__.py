"""The package implicit_ssm_eval in a source checkout: the repository root (see the root's __init__.py).

Python finds this folder when the checkout is on sys.path (an editable install puts it there; so does PYTHONPATH);
the package's path is then the root, whose folders model_adapters/, tasks/ and harness/ are its subpackages. A wheel
installs the root's __init__.py in place of this file.
"""

import os as _os

__path__ = [_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))]
