"""Running the installed `lifecycle` command, as a user would, with a clean environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

LIFECYCLE = Path(sys.executable).with_name("lifecycle")


def run_lifecycle(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``lifecycle *args`` with no LIFECYCLE_* variable but ``env``; output captured."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLE_")}
    return subprocess.run(
        [str(LIFECYCLE), *args],
        env={**clean, "COLUMNS": "200", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
