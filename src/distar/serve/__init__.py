"""``distar serve``: a local web page and JSON API that generate as the user types.

:mod:`.models` loads the one-step model (and optionally a reference) once; :mod:`.queue` runs
requests one at a time, keeping only each client's latest; :mod:`.app` is the Starlette app (the
page, ``GET /info``, ``POST /generate``). Needs the ``serve`` extra (``pip install 'distar[serve]'``).
"""

#: Names of this machine (in ``--host`` and in a request's ``Host`` header); others need ``--allow-remote``.
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
