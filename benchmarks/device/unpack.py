"""On the device machine: reassemble the wheel parts sent by stage.py, verify, install into a folder.

    python3 benchmarks/device/unpack.py [--target /tmp/site]   then   export PYTHONPATH=/tmp/site:$PYTHONPATH

Standard library only. Exits 1 naming the missing or corrupt part (send that part again).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

PARTS = Path(__file__).resolve().parents[2] / ".device" / "parts"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="/tmp/site")
    args = ap.parse_args()
    index = json.loads((PARTS / "index.json").read_text())
    wheels = []
    for w in index["wheels"]:
        out = Path("/tmp") / w["wheel"]
        digest = hashlib.sha256()
        with out.open("wb") as f:
            for p in w["parts"]:
                path = PARTS / p["file"]
                if not path.is_file():
                    print(f"missing part {p['file']} (send it with carry)", file=sys.stderr)
                    return 1
                chunk = path.read_bytes()
                if hashlib.sha256(chunk).hexdigest() != p["sha256"]:
                    print(f"corrupt part {p['file']}: sha256 differs from the index", file=sys.stderr)
                    return 1
                digest.update(chunk)
                f.write(chunk)
        if digest.hexdigest() != w["sha256"]:
            print(f"{w['wheel']}: reassembled sha256 differs from the index", file=sys.stderr)
            return 1
        wheels.append(str(out))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--target", args.target, *wheels], check=True)
    print(f"installed {', '.join(Path(w).name for w in wheels)} into {args.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
