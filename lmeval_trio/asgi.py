"""The ASGI app hypercorn serves: ``hypercorn --config hypercorn.toml lmeval_trio.asgi:app``.

Settings come from the environment (see README); nothing starts until hypercorn's lifespan
startup, when the app starts its supervisor.
"""

from lmeval_trio.http.app import create_app

app = create_app()
