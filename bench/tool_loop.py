"""A 5-step agent tool loop through `moa serve`: advice reused per user turn vs proposers
asked again at every iteration, side by side in one run.

An agent (openai-python, the Chat Completions wire, non-streamed) asks one question per user
turn and loops: the stack's aggregator answers with a tool call four times, the agent sends
back each tool result, and the fifth request gets the final text. Five requests per turn.

- Proposers: 3 members on the fault backend (`moakit.testing.FakeBackend`, real HTTP), each
  answering `--tokens` tokens after `--ttft` seconds, at `--per-token` seconds per token.
- Aggregator: an in-process test double (`FunctionModel(tools=True)`) that takes `--agg-s`
  seconds and scripts the calls (the fault backend itself scripts no tool calls in this
  build); it sits behind the real HTTP server like any member.
- Two stacks served by one server: `advice.refresh = "user_turn"` (the default) and
  `"every_iteration"`. Turns alternate between them (interleaved, so a machine's drift hits
  both), each turn with its own question (no advice carried across turns).

Prints, per mode: upstream calls per turn (proposers, aggregator), wall time per turn
(median and spread), and the ratios.

    .venv/bin/python bench/tool_loop.py                    # 5 turns per mode
    .venv/bin/python bench/tool_loop.py --turns 10 --ttft 0.5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import openai
import uvicorn
from starlette.applications import Starlette

from moakit import Stack, parse_config
from moakit.messages import ChatRequest, Completion, ToolCall
from moakit.server import create_app
from moakit.testing.fake_backend import Behavior, FakeBackend, Latency
from moakit.testing.models import FunctionModel

STEPS = 5  # requests per user turn: 4 tool calls, then the final answer
TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look a fact up",
        "parameters": {
            "type": "object",
            "properties": {"step": {"type": "integer"}},
            "required": ["step"],
        },
    },
}
MODES = ("user_turn", "every_iteration")


def scripted_aggregator(delay_s: float) -> FunctionModel:
    """Calls ``lookup`` until the conversation holds STEPS - 1 tool results, then answers."""

    def fn(request: ChatRequest) -> Completion | str:
        results = sum(1 for m in request.messages if m.role == "tool")
        if results >= STEPS - 1:
            return "Done: all facts looked up."
        call = ToolCall(f"call_{results}", "lookup", json.dumps({"step": results}))
        return Completion(text="", tool_calls=(call,))

    return FunctionModel(fn, name="agg", delay_s=delay_s, tools=True)


def stack(mode: str, base_url: str, agg: FunctionModel) -> Stack:
    member = {"provider": "openai", "base_url": base_url, "max_tokens": 64, "retries": 0}
    cfg = parse_config(
        {
            "name": f"loop-{mode}",
            "layers": [[{**member, "model": f"p{i}"} for i in (1, 2, 3)]],
            "aggregator": {**member, "model": "agg"},
            "advice": {"refresh": mode},
        }
    )
    return Stack(cfg, models={"agg": agg})


@contextlib.contextmanager
def serve(app: Starlette) -> Iterator[str]:
    """The server app on a free loopback port (uvicorn in a thread); yields the /v1 URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        server.should_exit = True
        thread.join(5)
        sock.close()


def agent_turn(sdk: openai.OpenAI, model: str, question: str) -> int:
    """One user turn of the agent loop; returns how many requests it took."""
    messages: list[Any] = [{"role": "user", "content": question}]
    for request in range(1, STEPS + 2):
        done = sdk.chat.completions.create(model=model, messages=messages, tools=[TOOL])  # type: ignore[list-item]
        message = done.choices[0].message
        if not message.tool_calls:
            return request
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls:
            messages.append({"role": "tool", "tool_call_id": call.id, "content": "a fact"})
    raise RuntimeError("the loop did not end")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=5, help="user turns per mode")
    parser.add_argument("--ttft", type=float, default=0.3, help="proposer time to first token")
    parser.add_argument("--per-token", type=float, default=0.005, help="proposer s per token")
    parser.add_argument("--tokens", type=int, default=40, help="proposer answer length")
    parser.add_argument("--agg-s", type=float, default=0.2, help="aggregator time per call")
    args = parser.parse_args()

    latency = Latency(ttft_s=args.ttft, per_token_s=args.per_token)
    behavior = Behavior(latency=latency, tokens=args.tokens)
    aggs = {mode: scripted_aggregator(args.agg_s) for mode in MODES}
    walls: dict[str, list[float]] = {mode: [] for mode in MODES}
    proposer_calls = dict.fromkeys(MODES, 0)
    requests = dict.fromkeys(MODES, 0)
    with FakeBackend(default=behavior) as fb:
        stacks = {f"loop-{mode}": stack(mode, fb.base_url, aggs[mode]) for mode in MODES}
        with serve(create_app(stacks, api_keys=[])) as base:
            sdk = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=60)
            agent_turn(sdk, "loop-user_turn", "warm-up")  # connections, imports
            for turn in range(args.turns):
                for mode in MODES if turn % 2 == 0 else reversed(MODES):
                    before = fb.stats.requests
                    started = time.perf_counter()
                    requests[mode] += agent_turn(sdk, f"loop-{mode}", f"question {turn}")
                    walls[mode].append(time.perf_counter() - started)
                    proposer_calls[mode] += fb.stats.requests - before
    turns = args.turns
    agg_calls = {mode: len(aggs[mode].requests) for mode in MODES}
    agg_calls["user_turn"] -= STEPS  # the warm-up turn
    print(
        f"{turns} user turns per mode, {STEPS} requests each; 3 proposers "
        f"(ttft {args.ttft}s + {args.tokens} tokens x {args.per_token}s), aggregator {args.agg_s}s"
    )
    print(f"{'advice':<16}{'requests':>9}{'proposer':>10}{'agg':>6}{'wall p50':>10}{'min-max':>14}")
    for mode in MODES:
        w = walls[mode]
        print(
            f"{mode:<16}{requests[mode] / turns:>9.1f}{proposer_calls[mode] / turns:>10.1f}"
            f"{agg_calls[mode] / turns:>6.1f}{statistics.median(w):>9.2f}s"
            f"{min(w):>7.2f}-{max(w):.2f}s"
        )
    calls = {m: proposer_calls[m] + agg_calls[m] for m in MODES}
    ratio_calls = calls["every_iteration"] / calls["user_turn"]
    ratio_wall = statistics.median(walls["every_iteration"]) / statistics.median(walls["user_turn"])
    print(
        f"every_iteration / user_turn: {ratio_calls:.2f}x upstream calls, "
        f"{ratio_wall:.2f}x wall time per turn"
    )


if __name__ == "__main__":
    main()
