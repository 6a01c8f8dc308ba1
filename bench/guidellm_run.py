"""guidellm (vLLM's benchmark client), run as a user would, against the system as `make up`
starts it, on the real SmolLM2 over the OpenAI-compatible door.

    python -m bench.guidellm_run [--streams 1,4,16] [--seconds 30]

Sets up guidellm in .venv-bench (scripts/setup_bench.sh), starts scheduler, worker and router
as processes with the default config, and runs a concurrent profile at each number of
streams: chat completions of synthetic 64-token prompts and 32-token answers (guidellm's
default options: streaming with usage, `ignore_eos`), with SmolLM2's own tokenizer from the
model cache (nothing from a hub). Writes guidellm's JSON report to bench/results/ and prints
TTFT, ITL and output tokens/s per concurrency, errors, and the output tokens guidellm counted
beside the tokens the router's door streamed (its generated-tokens counter).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import urllib.request
from pathlib import Path

from bench.local_system import ROOT, LocalSystem

GUIDELLM = ROOT / ".venv-bench" / "bin" / "guidellm"
STREAMED = "inference_router_generated_tokens_total"


def scenario(target: str, tokenizer: Path, streams: list[int], seconds: float) -> dict:
    return {
        "spec": {
            "backend": {
                "kind": "openai_http",
                "target": target,
                "model": "smollm2-135m",
                "request_format": "/v1/chat/completions",
            },
            "profile": {"kind": "concurrent", "streams": streams[0]},
            "tokenizer": {"kind": "huggingface_auto", "model": str(tokenizer)},
            "data": [{"kind": "synthetic_text", "prompt_tokens": 64, "output_tokens": 32}],
            "constraints": [{"kind": "max_duration", "seconds": seconds}],
        },
        "benchmarks": [{"profile.streams": n} for n in streams],
    }


def streamed_tokens(metrics_port: int) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
    lines = body.read().decode().splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith(STREAMED))


def summarize(report: dict) -> list[dict]:
    rows = []
    for bench in report["benchmarks"]:
        m = bench["metrics"]
        rows.append(
            {
                "streams": bench["config"]["strategy"]["streams"],
                "ttft_ms_p50": m["time_to_first_token_ms"]["successful"]["median"],
                "itl_ms_p50": m["inter_token_latency_ms"]["successful"]["median"],
                "output_tokens_per_s": m["output_tokens_per_second"]["total"]["mean"],
                "requests": m["request_totals"],
                "output_tokens": m["output_token_count"]["total"]["total_sum"],
            }
        )
    return rows


def run(args: argparse.Namespace, work: Path) -> dict:
    subprocess.run([str(ROOT / "scripts" / "setup_bench.sh")], check=True)
    tokenizer = next((ROOT / ".cache" / "models" / "smollm2-135m").glob("*/tokenizer.json")).parent
    system = LocalSystem(work)
    system.start(ready_timeout_s=600)
    try:
        before = streamed_tokens(system.metrics_ports["router"])
        spec = work / "scenario.json"
        target = f"http://127.0.0.1:{system.http_port}"
        spec.write_text(json.dumps(scenario(target, tokenizer, args.streams, args.seconds)))
        report = work / "report.json"
        subprocess.run(
            [
                str(GUIDELLM),
                "run",
                "-c",
                str(spec),
                "--output",
                f"kind=json,path={report}",
                "--disable-progress",
            ],
            cwd=work,  # guidellm writes guidellm.log where it runs
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            check=True,
        )
        streamed = streamed_tokens(system.metrics_ports["router"]) - before
    finally:
        system.stop()
    data = json.loads(report.read_text())
    return {"rows": summarize(data), "door_streamed_tokens": streamed, "report": data}


def load_arguments(out: str) -> argparse.Namespace:
    """The command line of a guidellm comparison: streams, seconds per level, the JSON file."""
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--streams", default="1,4,16", type=lambda s: [int(n) for n in s.split(",")]
    )
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--out", default=out)
    return parser.parse_args()


def main() -> None:
    args = load_arguments("bench/results/guidellm.json")
    with tempfile.TemporaryDirectory() as work:
        result = run(args, Path(work))
    print(
        f"{'streams':>7} {'TTFT p50 ms':>12} {'ITL p50 ms':>11} {'out tok/s':>10} {'ok':>4} "
        f"{'errors':>6} {'cut':>4}"
    )
    for r in result["rows"]:
        totals = r["requests"]
        print(
            f"{r['streams']:>7} {r['ttft_ms_p50']:>12.0f} {r['itl_ms_p50']:>11.1f} "
            f"{r['output_tokens_per_s']:>10.1f} {totals['successful']:>4} {totals['errored']:>6} "
            f"{totals['incomplete']:>4}"
        )
    counted = sum(r["output_tokens"] for r in result["rows"])
    print(
        f"output tokens guidellm counted: {counted:.0f}; the door streamed: "
        f"{result['door_streamed_tokens']:.0f}"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
