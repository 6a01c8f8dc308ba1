"""Command-line client.

python -m client generate --model smollm2-135m --priority high "Hello"
python -m client infer --model llama-3-70b "Hello"
python -m client embed "first text" "second text"
python -m client models
python -m client status
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import grpc
from google.protobuf import json_format
from inference.v1 import types_pb2

from client.sdk import PRIORITIES, InferenceClient, RouterLost
from client.status_table import render


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with InferenceClient(
            args.address, args.api_key, args.timeout, args.tls, args.ca_file
        ) as client:
            return _run(client, args)
    except grpc.RpcError as exc:
        print(f"\nerror: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except RouterLost as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _run(client: InferenceClient, args: argparse.Namespace) -> int:
    if args.command == "embed":
        for text, vector in zip(args.texts, client.embed(args.model, args.texts), strict=True):
            head = ", ".join(f"{v:.4f}" for v in vector[:4])
            print(f"{len(vector)} dims [{head}, ...]  {text}")
        return 0
    if args.command == "models":
        print(json_format.MessageToJson(client.models(), indent=2))
        return 0
    if args.command == "status":
        return _status(client, args)
    request = client.request(
        args.model,
        args.prompt,
        priority=args.priority,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        stop=args.stop,
    )
    if args.command == "infer":
        print(json_format.MessageToJson(client.infer(request), indent=2))
        return 0
    for message in client.generate(request):
        if message.HasField("delta"):
            print(message.delta.text, end="", flush=True)
        else:
            s = message.summary
            print(
                f"\n\n[{s.completion_tokens} tokens, {_finish(s.finish_reason)}, "
                f"first token {s.time_to_first_token_ms:.0f} ms, queue {s.queue_time_ms:.1f} ms,"
                f" total {s.inference_time_ms:.0f} ms on {s.gpu_id} ({s.worker_id})]",
                file=sys.stderr,
            )
    return 0


def _status(client: InferenceClient, args: argparse.Namespace) -> int:
    while True:
        status = client.status()
        if args.json:
            print(json_format.MessageToJson(status, indent=2))
        else:
            if args.watch:
                print("\033[2J\033[H", end="")  # clear the terminal
            print(render(status))
        if not args.watch:
            return 0
        time.sleep(args.watch)


def _finish(reason: int) -> str:
    return types_pb2.FinishReason.Name(reason).removeprefix("FINISH_REASON_").lower()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m client",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--address",
        default=os.environ.get("INFERENCE_ADDRESS", "localhost:50051"),
        help="a router, or several comma-separated: a call whose router dies moves to the next "
        "(a stream continues where it stopped)",
    )
    parser.add_argument("--api-key", default=os.environ.get("INFERENCE_API_KEY"))
    parser.add_argument("--timeout", type=float, default=120.0, help="deadline in seconds")
    parser.add_argument("--tls", action="store_true", help="connect over TLS (system roots)")
    parser.add_argument(
        "--ca-file", default=os.environ.get("INFERENCE_CA_FILE"), help="TLS, trusting this CA"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("generate", "infer"):
        sub = commands.add_parser(name, help=f"{name} text")
        sub.add_argument("prompt")
        sub.add_argument("--model", required=True)
        sub.add_argument("--priority", choices=sorted(PRIORITIES), default="medium")
        sub.add_argument("--max-tokens", type=int, default=0)
        sub.add_argument("--temperature", type=float)
        sub.add_argument("--top-p", type=float)
        sub.add_argument("--seed", type=int)
        sub.add_argument("--stop", action="append")
    embed = commands.add_parser("embed", help="embed texts with an embedding model")
    embed.add_argument("texts", nargs="+")
    embed.add_argument("--model", default="minilm-l6-v2")
    commands.add_parser("models", help="list models")
    status = commands.add_parser("status", help="queue, workers, models and leases")
    status.add_argument("--watch", type=float, metavar="SECONDS", help="refresh every SECONDS")
    status.add_argument("--json", action="store_true", help="the raw GetStatus answer")
    return parser


if __name__ == "__main__":
    sys.exit(main())
