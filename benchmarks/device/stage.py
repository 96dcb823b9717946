"""Stage what a GPU-machine run needs but cannot fetch there, inside this checkout (git-ignored).

The device machine receives the working tree only (64 MiB per call, no network): the fixtures beside the
checkout (``../shared``) do not travel, and ``onnxruntime-gpu`` (255 MB wheel, CUDA 13 build) is not in
its image. This script, run here before the device session:

* copies the fixtures (17 MB) into ``.device/fixtures`` (git-ignored, never committed), to be carried in
  one call (not a ``shared/`` folder: that would travel with every call and eat into each part's room);
* downloads the wheels named with ``--wheel`` (cp312, manylinux) and splits each into parts of at most
  ``--part-mib`` MiB under ``.device/parts/`` with an index (sha256 of every part and of the whole);
* prints the sequence of ``run`` calls: one call per part (``carry`` names that part; what was sent stays
  on the warm machine), the fixtures riding with the smallest part, the last call unpacking and running
  the check. Tracked files + the carried paths of one call must stay under 64 MiB.

Usage:  python benchmarks/device/stage.py --wheel onnxruntime-gpu==1.31.1
See benchmarks/device/README.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from flexavatar.dev_fixtures import fixtures_dir  # noqa: E402

PARTS = REPO / ".device" / "parts"
STAGED_FIXTURES = REPO / ".device" / "fixtures"
FIXTURE_FILES = ("official_flex", "driving")     # 17 MB: everything the tests may read
PIP_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def stage_fixtures() -> int:
    src = fixtures_dir()
    total = 0
    for rel in FIXTURE_FILES:
        a, b = src / rel, STAGED_FIXTURES / rel
        if not a.exists():
            raise SystemExit(f"fixtures not found: {a} (set FLEXAVATAR_FIXTURES)")
        b.parent.mkdir(parents=True, exist_ok=True)
        if a.is_dir():
            shutil.copytree(a, b, dirs_exist_ok=True)
            total += sum(f.stat().st_size for f in b.rglob("*") if f.is_file())
        else:
            shutil.copy2(a, b)
            total += b.stat().st_size
    return total


def download(spec: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    before = set(dest.glob("*.whl"))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", "-d", str(dest), spec]
    for p in PIP_PLATFORMS:
        cmd[4:4] = ["--platform", p]
    subprocess.run(cmd, check=True)
    new = set(dest.glob("*.whl")) - before
    name = spec.split("==")[0].replace("-", "_").lower()
    found = [w for w in (new or dest.glob("*.whl")) if w.name.lower().startswith(name)]
    if not found:
        raise SystemExit(f"pip left no wheel for {spec} in {dest}")
    return sorted(found)[-1]


def split(wheel: Path, part_bytes: int) -> list[dict]:
    data = wheel.read_bytes()
    parts = []
    for k in range(0, len(data), part_bytes):
        chunk = data[k:k + part_bytes]
        path = PARTS / f"{wheel.name}.part{k // part_bytes:02d}"
        path.write_bytes(chunk)
        parts.append({"file": path.name, "sha256": hashlib.sha256(chunk).hexdigest(), "bytes": len(chunk)})
    return parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wheel", action="append", default=[], help="pip spec, e.g. onnxruntime-gpu==1.31.1")
    ap.add_argument("--part-mib", type=int, default=54, help="part size (a call's tree must stay under 64 MiB)")
    ap.add_argument("--no-fixtures", action="store_true")
    args = ap.parse_args()
    fixtures = [] if args.no_fixtures else [str(STAGED_FIXTURES.relative_to(REPO))]
    if fixtures:
        shutil.rmtree(STAGED_FIXTURES, ignore_errors=True)
        print(f"fixtures: {stage_fixtures() / 2**20:.1f} MiB staged in {fixtures[0]}/")
    if not args.wheel:
        print(f"device call: run(carry={json.dumps(fixtures)}, command='bash benchmarks/device/gpu_session.sh')")
        return
    shutil.rmtree(PARTS, ignore_errors=True)
    PARTS.mkdir(parents=True)
    index = {"wheels": []}
    for spec in args.wheel:
        wheel = download(spec, REPO / ".device" / "downloads")
        index["wheels"].append({"wheel": wheel.name, "sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
                                "parts": split(wheel, args.part_mib * 2**20)})
    (PARTS / "index.json").write_text(json.dumps(index, indent=1))
    parts = [p for w in index["wheels"] for p in w["parts"]]
    # the smallest part travels first with the fixtures and starts prewarm.sh (build + FLEX-1 export in the
    # background); the index travels last with the session command
    order = sorted(range(len(parts)), key=lambda k: (k != min(range(len(parts)), key=lambda j: parts[j]["bytes"]), k))
    print(f"{len(parts)} parts in {PARTS.relative_to(REPO)}/; device calls (back to back, the machine is "
          "released after 30 s idle):")
    prewarm = "setsid bash benchmarks/device/prewarm.sh </dev/null >/dev/null 2>&1 & sleep 2"
    for n, k in enumerate(order):
        first, last = n == 0, n == len(order) - 1
        carry = ([f".device/parts/{parts[k]['file']}"] + ([".device/parts/index.json"] if last else [])
                 + (fixtures if first else []))
        command = ("FLEXAVATAR_GIT_COMMIT=$(commit) FLEXAVATAR_SESSION_BUDGET_S=<min(left - 90, 550)> "
                   "FLEXAVATAR_PREWARM_WAIT=build bash benchmarks/device/gpu_session.sh" if last
                   else prewarm if first else "ls .device/parts")
        print(f"  run(carry={json.dumps(carry)}, command={command!r})")

if __name__ == "__main__":
    main()
