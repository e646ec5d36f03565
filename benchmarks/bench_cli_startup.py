"""Wall time of the `iad` commands a user waits on for a quick answer (target: under 2 s each, even on a
busy machine), as fresh processes, the way a shell runs them:

- `iad --help`;
- `iad methods` (the catalogue of methods and presets, `ad_core.catalog.METHODS`);
- `iad jobs` (the job list of an empty private home);
- `iad submit` with a misspelt method, and with an unknown preset: rejected from the catalogue before torch or
  the database are touched (`workers.planner.check_names`).

For comparison it also times `python -c "import torch"`: what each of these commands used to pay at least
(before the name checks moved off the registry they took 5-12 s on our 2-core machines, 10-17 s while a
worker was busy).

    python benchmarks/bench_cli_startup.py [--repeats 5] [--target 2.0]

The `torch` column says whether the command imported torch (checked in one extra run at exit). Exits 1 when
a command's median is above the target or it imported torch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

COMMANDS: dict[str, list[str]] = {
    "iad --help": ["--help"],
    "iad methods": ["methods"],
    "iad jobs": ["jobs"],
    "iad submit (typo in method)": ["submit", "--method", "patchcor", "--dataset", "demo"],
    "iad submit (unknown preset)": ["submit", "--method", "patchcore", "--preset", "turbo", "--dataset", "demo"],
}


def timed(argv: list[str], env: dict[str, str], repeats: int) -> list[float]:
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, env=env, capture_output=True, check=False)
        runs.append(time.perf_counter() - start)
    return runs


# Runs the CLI in-process and reports at exit whether torch was imported.
_TORCH_PROBE = (
    "import atexit, sys\n"
    "atexit.register(lambda: print('TORCH_IMPORTED=' + str('torch' in sys.modules), file=sys.stderr))\n"
    "from workers.cli import main\n"
    "sys.argv = ['iad', *sys.argv[1:]]\n"
    "sys.exit(main())\n"
)


def imports_torch(cli_args: list[str], env: dict[str, str]) -> bool:
    done = subprocess.run([sys.executable, "-c", _TORCH_PROBE, *cli_args], env=env, capture_output=True, text=True,
                          check=False)
    return "TORCH_IMPORTED=True" in done.stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--target", type=float, default=2.0, help="seconds (median) per command")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as home:
        env = {k: v for k, v in os.environ.items() if k != "IAD_PLUGINS"}  # plugins need the full registry
        env["IAD_HOME"] = home  # nothing of the user's is read or written
        slow = []
        print(f"{'command':32s} {'median s':>9s} {'max s':>7s} {'torch':>6s}")
        for label, cli_args in COMMANDS.items():
            runs = timed([sys.executable, "-m", "workers.cli", *cli_args], env, args.repeats)
            median = statistics.median(runs)
            torch_imported = imports_torch(cli_args, env)
            print(f"{label:32s} {median:9.2f} {max(runs):7.2f} {'yes' if torch_imported else 'no':>6s}")
            if median > args.target or torch_imported:
                slow.append(label)
        runs = timed([sys.executable, "-c", "import torch"], env, max(1, args.repeats // 2))
        print(f"{'(reference) import torch':32s} {statistics.median(runs):9.2f} {max(runs):7.2f}")
    if slow:
        print(f"over the {args.target:g} s target or importing torch: {', '.join(slow)}")
        return 1
    print(f"all under the {args.target:g} s target")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
