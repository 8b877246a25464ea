"""Preloaded by ``serve``'s zygote: what Mistral's ``std.http`` needs in the child.

``requests``, Mistral's egress policy (``mistral.utils.egress``) and the options it
reads (``mistral.config``), imported once instead of in every child that runs
``std.http`` (about 175 ms each), without their import-time warnings.
"""

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import mistral.config  # noqa: F401
    import requests  # noqa: F401
    from mistral.utils import egress  # noqa: F401
