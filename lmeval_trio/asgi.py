"""The ASGI app hypercorn serves: ``hypercorn --config hypercorn.toml lmeval_trio.asgi:app``.

Settings come from the environment (see README); an invalid setting stops the start with a
message naming the variable, and so does an lm-eval that lacks an internal the request model
is derived from (naming the internal). Nothing starts until hypercorn's lifespan startup, when
the app starts its supervisor.
"""

import sys

from lmeval_trio.config import Settings, SettingsError
from lmeval_trio.harness.versions import LmEvalUnsupported, require_internals
from lmeval_trio.http.app import create_app
from lmeval_trio.logging_setup import configure_logging

try:
    settings = Settings.from_env()
except SettingsError as error:
    print(f"lmeval-trio: {error}", file=sys.stderr)
    raise SystemExit(2) from None

try:
    require_internals()  # the request model (cached for create_app) and the rest
except LmEvalUnsupported as error:
    print(f"lmeval-trio: {error}", file=sys.stderr)
    raise SystemExit(2) from None

configure_logging(settings)
app = create_app(settings)
