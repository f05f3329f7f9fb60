"""The short table benchmarks/gpu_check.sh prints last, from the JSON and logs it left in $OUT."""
from __future__ import annotations

import json
import os
import re
import sys

_PYTEST_SUMMARY = re.compile(r"^(\d+ (passed|failed|skipped|errors?|xfailed|xpassed|deselected|warnings?),? ?)+ in [\d.]+s")


def _load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def main(out: str) -> int:
    lines = []
    env = os.path.join(out, "env.txt")
    if os.path.exists(env):
        with open(env) as f:
            lines += [line.rstrip() for line in f if line.strip()][:3]
    bench = _load(os.path.join(out, "bench.json"))
    if bench:
        lines += ["", "| layout | contender | wall us | event us | graph us | GB/s (event) | x dropped |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        for key, r in bench["results"].items():
            layout, name = key.split(" | ", 1)
            graph = f"{r['graph_us']:.1f}" if r.get("graph_us") else "-"
            gbs = f"{r['event_gbs']:.0f}" if r.get("event_gbs") else "-"
            dropped = f"{100 * r['dropped']:.2f}%" if r.get("dropped") is not None else "-"
            lines.append(f"| {layout} | {name} | {r['wall_us']:.1f} | {r['event_us']:.1f} | {graph} | {gbs} | "
                         f"{dropped} |")
        lines += ["", "targets (issue 14; event timings include host time, graph timings are device time):"]
        lines += [f"  {'met ' if met else 'MISS'} {text}: {value}" for text, value, met in bench["targets"]]
    else:
        lines.append("bench: no results (see bench.log)")
    for name in ("resnet.json", "resnet_compiled.json"):
        resnet = _load(os.path.join(out, name))
        if resnet:
            how = "torch.compile" if resnet.get("compiled") else "eager"
            lines += ["", f"resnet50 bf16 channels_last batch {resnet['batch']}, {how}, variants interleaved "
                          "(median ms/step, host ms to enqueue it, median per-round ratio):"]
            for kind, r in resnet["results"].items():
                if "step_ms" not in r:
                    lines.append(f"  {kind}: {r.get('error', '?')}")
                    continue
                ratio = (f", {r['vs_plain']:.3f} x plain (rounds {r['vs_plain_range'][0]:.3f}-{r['vs_plain_range'][1]:.3f})"
                         if r.get("vs_plain") else "")
                lines.append(f"  {kind}: {r['step_ms']:.2f} ms, host {r.get('host_ms_median', 0):.2f} ms{ratio}")
            t = resnet["target"]
            lines.append(f"  {'met ' if t['met'] else 'MISS'} {t['text']}: {t['value']}")
        elif name == "resnet.json":
            lines.append("resnet: no results (see resnet.log)")
    tests = os.path.join(out, "tests.log")
    if os.path.exists(tests):
        with open(tests) as f:
            log = [line.strip() for line in f]
        # pytest's last line ("3 failed, 120 passed, 2 skipped in 50.1s", "=" around it without -q)
        # and its FAILED/ERROR lines.
        final = [line for line in log if _PYTEST_SUMMARY.match(line.strip("= "))]
        failed = [line for line in log if line.startswith(("FAILED", "ERROR"))]
        lines += ["", "tests: " + (final[-1].strip("= ") if final else "no summary line (timeout? see tests.log)")]
        lines += [f"  {t}" for t in failed[:10]]
        lines += [f"  {line}" for line in log if line.startswith("Triton compiles")]
        if not final:
            lines.append(f"  {sum(' PASSED' in line for line in log)} passed before the cut")
    probe = _load(os.path.join(out, "probe.json"))
    if probe:
        lines += ["", "host us per call (gpu_probe.py host): " + ", ".join(
            f"{k} {v}" for k, v in probe.get("host_us", {}).items() if isinstance(v, (int, float)))]
        lines += ["state kernel us (gpu_probe.py state): " + ", ".join(
            f"{k} {v.get('us')}" for k, v in probe.get("state", {}).items())]
    ncu = os.path.join(out, "ncu.txt")
    lines.append("ncu: " + (f"profile in {ncu}" if os.path.exists(ncu) and os.path.getsize(ncu) > 0
                            else "not available (see ncu.log)"))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "./gpu-results"))
