"""Fake job: prints {"env": <its environment>, "cwd": <its working directory>} as JSON."""

import json
import os

print(json.dumps({"env": dict(os.environ), "cwd": os.getcwd()}))
