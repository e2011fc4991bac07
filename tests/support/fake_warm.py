"""A stand-in for ``python -m lmeval_trio.harness.fastrun --warm`` in warm-pool tests (no lm_eval).

Speaks the same protocol: ``--ready-fd=N`` gets ``ready`` once "preloaded", then one JSON
spec line on stdin. ``FAKE_WARM_MODE`` picks what happens after the spec: ``echo`` (default)
prints the spec, the marker variable and its environment and exits 0; ``block`` also prints
them, then waits forever; ``die`` exits 3 before it is ready.
"""

from __future__ import annotations

import json
import os
import sys
import threading


def main() -> int:
    mode = os.environ.get("FAKE_WARM_MODE", "echo")
    ready_fd = next(int(a.split("=", 1)[1]) for a in sys.argv[1:] if a.startswith("--ready-fd="))
    if mode == "die":
        return 3
    os.write(ready_fd, b"ready\n")
    os.close(ready_fd)
    line = sys.stdin.readline()
    if not line:
        return 0
    spec = json.loads(line)
    echo = {"spec": spec, "marker": os.environ.get("WARM_MARKER"), "pid": os.getpid()}
    print(json.dumps({**echo, "env": list(os.environ.items())}))
    sys.stdout.flush()
    if mode == "block":
        threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
