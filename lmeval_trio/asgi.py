"""The ASGI app hypercorn serves: ``hypercorn --config hypercorn.toml lmeval_trio.asgi:app``.

Settings come from the environment (see README); an invalid setting stops the start with a
message naming the variable, and so does an lm-eval that lacks an internal the request model
is derived from (naming the internal). Nothing starts until hypercorn's lifespan startup, when
the app starts its supervisor.
"""

import sys

from lmeval_trio.cli_schema import LmEvalUnsupported, request_model
from lmeval_trio.config import Settings, SettingsError
from lmeval_trio.http.app import create_app
from lmeval_trio.logging_setup import configure_logging

try:
    settings = Settings.from_env()
except SettingsError as error:
    print(f"lmeval-trio: {error}", file=sys.stderr)
    raise SystemExit(2) from None

try:
    request_model()  # derived from lm-eval's parser; cached for create_app
except LmEvalUnsupported as error:
    print(f"lmeval-trio: {error}", file=sys.stderr)
    raise SystemExit(2) from None

configure_logging(settings)
app = create_app(settings)
