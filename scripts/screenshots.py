"""Regenerate docs/screenshots/: run the dashboard's browser tests with screenshots kept.

    .venv/bin/python scripts/screenshots.py

The screenshots come from the same steps that the tests check (real lm-eval dummy runs, a live
progress bar, a comparison), so they show what the tests proved. Needs Debian's chromium
(/usr/bin/chromium) and the dev dependency group (playwright); it takes about a minute.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "docs" / "screenshots"


def main() -> int:
    SHOTS.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DASHBOARD_SCREENSHOTS": str(SHOTS)}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    code = subprocess.call([*command, "tests/test_dashboard.py"], cwd=ROOT, env=env)
    if code == 0:
        for shot in sorted(SHOTS.glob("*.png")):
            print(shot.relative_to(ROOT))
    return code


if __name__ == "__main__":
    sys.exit(main())
