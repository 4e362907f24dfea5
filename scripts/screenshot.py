"""Screenshot an HTML file with headless Chromium: ``python scripts/screenshot.py PAGE.html[#FRAGMENT] OUT.png [WIDTH,HEIGHT]``.

A ``#p2`` fragment opens the third problem of a ``ponder view`` page of a run file.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def screenshot(html: str, png: Path, size: str = "1200,800") -> None:
    page, _, fragment = html.partition("#")
    url = Path(page).resolve().as_uri() + (f"#{fragment}" if fragment else "")
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        sys.exit("screenshot: no chromium on PATH (apt-get install -y chromium)")
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", f"--window-size={size}", f"--screenshot={png.resolve()}",
               url]
        subprocess.run(cmd, check=True, timeout=120, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not png.exists():
        sys.exit(f"screenshot: chromium wrote no {png}")
    print(f"wrote {png}")


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    screenshot(sys.argv[1], Path(sys.argv[2]), *sys.argv[3:])
