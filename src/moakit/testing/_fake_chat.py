"""The chat-completions endpoint of the fake backend: request parsing, latency, fault injection
and the response on the wire."""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any, Literal

from starlette.types import Message, Receive, Scope, Send

from moakit.testing import _fake_tools as tools
from moakit.testing import _fake_wire as wire

if TYPE_CHECKING:
    from moakit.testing.fake_backend import FakeBackend

_Outcome = Literal["completed", "cancelled", "aborted"]

# Pause between the last chunk and the reset: an RST makes the peer's kernel drop data it has not
# read yet, and the point of reset_mid_stream is that the client *did* see a few chunks.
_RESET_GRACE_S = 0.02
_RESET_CHUNKS = 2
_SHORT_SLEEP_S = 0.05
_JSON = (b"content-type", b"application/json")


class Conn:
    """Disconnect detection for one request.

    After the body is read, the only thing ``receive()`` can still yield is ``http.disconnect``,
    so one watcher task awaiting it lets every wait race against the client going away. It is
    created lazily: the zero-latency fast path never waits and never pays for a task.
    """

    __slots__ = ("_receive", "_task")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._task: asyncio.Task[None] | None = None

    async def receive(self) -> Message:
        return await self._receive()

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass

    def watcher(self) -> asyncio.Task[None]:
        if self._task is None:
            self._task = asyncio.ensure_future(self._watch())
        return self._task

    @property
    def gone(self) -> bool:
        return self._task is not None and self._task.done()

    async def sleep(self, delay: float) -> bool:
        """Wait `delay` seconds; False if the client disconnected meanwhile."""
        if delay <= 0:
            return not self.gone
        watcher = self.watcher()
        if delay < _SHORT_SLEEP_S:
            # Racing costs a future and callbacks per wait, which dominates CPU when hundreds of
            # streams tick every few ms; a disconnect noticed one short tick late is fine.
            await asyncio.sleep(delay)
            return not watcher.done()
        done, _ = await asyncio.wait((watcher,), timeout=delay)
        return not done

    async def until_gone(self, max_wait_s: float | None = None) -> None:
        await asyncio.wait((self.watcher(),), timeout=max_wait_s)

    def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()


class ChatEndpoint:
    """Raw ASGI endpoint: Starlette's Request/Response layer would cost more than the fake work,
    and faults need direct control over what goes on the wire."""

    def __init__(self, backend: FakeBackend) -> None:
        self._backend = backend

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stats = self._backend.stats
        stats.requests += 1
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        # Anything that escapes (task cancelled at forced shutdown) counts as the client's loss.
        outcome: _Outcome = "cancelled"
        conn = Conn(receive)
        try:
            outcome = await self._chat(scope, send, conn)
        except OSError:
            # Some uvicorn protocols raise ClientDisconnected (an OSError) on send after the
            # peer has gone.
            outcome = "cancelled"
        finally:
            conn.close()
            stats.in_flight -= 1
            if outcome == "completed":
                stats.completed += 1
            elif outcome == "aborted":
                stats.aborted += 1
            else:
                stats.cancelled += 1

    async def _chat(self, scope: Scope, send: Send, conn: Conn) -> _Outcome:
        chunks: list[bytes] = []
        while True:
            message = await conn.receive()
            if message["type"] == "http.disconnect":
                return "cancelled"
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        try:
            req = json.loads(b"".join(chunks))
        except ValueError:
            return await _send_json(send, 400, wire.bad_request_body("body is not valid JSON"))
        problem = validate_request(req)
        if problem is not None:
            return await _send_json(send, 400, wire.bad_request_body(problem))

        self._backend.stats._record_body(req)
        model: str = req["model"]
        by_model = self._backend.stats.requests_by_model
        by_model[model] = by_model.get(model, 0) + 1

        state = self._backend._model_state(model)
        behavior = state.behavior
        fault = behavior.fault
        if fault is not None:
            if fault.times is None or state.faults_served < fault.times:
                state.faults_served += 1
                kind_counts = self._backend.stats.faults_by_kind
                kind_counts[fault.kind] = kind_counts.get(fault.kind, 0) + 1
            else:
                fault = None
        kind = fault.kind if fault is not None else None
        ttft = state.sampler.ttft()
        per_token = behavior.latency.per_token_s

        if kind == "hang":
            await conn.until_gone()
            return "cancelled"
        if kind in ("http_500", "http_503", "http_429"):
            assert fault is not None
            if not await conn.sleep(ttft):
                return "cancelled"
            status = int(kind[5:])
            headers = [_JSON]
            if status in (429, 503) and fault.retry_after_s is not None:
                ra = fault.retry_after_s
                headers.append((b"retry-after", f"{ra:g}".encode()))
                headers.append((b"retry-after-ms", str(round(ra * 1000)).encode()))
            return await _send_json(send, status, wire.error_body(status, model), headers)
        if kind == "http_401_echo_key":
            token = _bearer_token(scope)
            body = wire.error_body(401, model, message=f"Incorrect API key provided: {token}.")
            return await _send_json(send, 401, body)

        messages: list[dict[str, Any]] = req["messages"]
        # vLLM's assistant prefill: the trailing assistant message is continued. The answer
        # is then the one the conversation before it gets, minus the words already written,
        # so an answer written in steps has the same length as one written at once.
        prefill = _prefill_of(req)
        skip = len(prefill.split()) if prefill is not None else 0
        if prefill is not None:
            messages = messages[:-1]
        script = behavior.tool_calls
        answer = None
        if script is not None and prefill is None and tools.offers_tools(req):
            answer = script(req)
        calls: list[tools.WireCall] = []
        if answer is not None and answer.calls and kind != "empty":
            digest = wire.messages_digest(messages)
            spoil = kind == "bad_tool_arguments"
            calls = tools.wire_calls(answer, req, digest, spoil=spoil)
        cap = req.get("max_completion_tokens")
        if cap is None:
            cap = req.get("max_tokens")
        finish = "tool_calls" if calls else "stop"
        if answer is not None and answer.text is not None:
            words = answer.text.split(" ") if answer.text else []
            n = len(words)
        else:
            n = 0 if calls else max(0, behavior.tokens - skip)
            words = []
        if cap is not None and cap < n:
            n, finish = cap, "length"
        if kind == "empty":
            n = 0
        elif kind == "truncated":
            finish = "length"
            calls = tools.truncate_calls(calls)
        if not words:
            words = wire.content_words(model, messages, skip + n)[skip:]
        words = words[:n]
        if prefill and words and not prefill[-1].isspace():
            words[0] = " " + words[0]
        completion_tokens = n + tools.calls_tokens(calls)
        prompt_tokens = wire.count_prompt_tokens(req["messages"])
        ttft += behavior.latency.prompt_per_token_s * prompt_tokens
        rid = f"chatcmpl-fake-{next(self._backend._ids)}"
        created = int(time.time())

        if not req.get("stream"):
            if not await conn.sleep(ttft + per_token * completion_tokens):
                return "cancelled"
            if kind == "reset_mid_stream":
                return await self._reset(scope, send, conn, [], headers_only=True)
            if kind == "malformed_json":
                return await _send_json(send, 200, wire.GARBAGE_JSON_BODY)
            text = " ".join(words)
            body = wire.completion_body(
                rid=rid,
                created=created,
                model=model,
                content=text,
                finish_reason=finish,
                usage_=wire.usage(prompt_tokens, completion_tokens),
                message=tools.message_with_calls(text, calls) if calls else None,
            )
            return await _send_json(send, 200, body)

        opts = req.get("stream_options")
        include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
        cw = wire.ChunkWriter(rid, created, model, include_usage)
        # (delay before, bytes): contiguous zero-delay events are coalesced into one write.
        if calls:
            deltas = tools.call_deltas(cw, words, calls)
            events = [(ttft, deltas[0]), *((per_token, d) for d in deltas[1:])]
        else:
            events = [(ttft, cw.first(words[0] if words else ""))]
            events.extend((per_token, cw.token(" " + w)) for w in words[1:])
        if kind == "malformed_json":
            events.insert(1, (0.0, wire.GARBAGE_SSE_LINE))
        if kind == "reset_mid_stream":
            events = events[: _RESET_CHUNKS + 1]
        else:
            events.append((0.0, cw.finish(finish)))
            if include_usage:
                events.append((0.0, cw.usage(wire.usage(prompt_tokens, completion_tokens))))
            events.append((0.0, wire.DONE))

        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        pending: list[bytes] = []
        for delay, data in events:
            if delay > 0:
                if pending:
                    await _send_body(send, b"".join(pending), more=True)
                    pending.clear()
                if not await conn.sleep(delay):
                    return "cancelled"
            pending.append(data)
        if kind == "reset_mid_stream":
            return await self._reset(scope, send, conn, pending, headers_only=False)
        await _send_body(send, b"".join(pending), more=False)
        return "cancelled" if conn.gone else "completed"

    async def _reset(
        self, scope: Scope, send: Send, conn: Conn, pending: list[bytes], *, headers_only: bool
    ) -> _Outcome:
        if headers_only:
            # Promise a body (content-length) so the client is mid-response when the RST lands.
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [_JSON, (b"content-length", b"1024")],
                }
            )
        elif pending:
            await _send_body(send, b"".join(pending), more=True)
        if not await conn.sleep(_RESET_GRACE_S):
            return "cancelled"
        if self._backend._abort_connection(scope):
            # Returning before uvicorn has seen the connection drop would make it log
            # "returned without completing response".
            await conn.until_gone(max_wait_s=1.0)
        return "aborted"


def _prefill_of(req: dict[str, Any]) -> str | None:
    """The partial answer to continue (``continue_final_message`` with a trailing assistant
    message), or None for an ordinary request."""
    messages = req["messages"]
    if not req.get("continue_final_message") or not messages:
        return None
    last = messages[-1]
    if last.get("role") != "assistant" or not isinstance(last.get("content"), str):
        return None
    return str(last["content"])


def _bearer_token(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name.lower() == b"authorization":
            return str(value.decode("latin-1").removeprefix("Bearer ").strip())
    return ""


def validate_request(req: Any) -> str | None:
    if not isinstance(req, dict):
        return "body must be a JSON object"
    if not isinstance(req.get("model"), str):
        return "'model' must be a string"
    messages = req.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return "'messages' must be a list of objects"
    for key in ("max_tokens", "max_completion_tokens"):
        value = req.get(key)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 0
        ):
            return f"'{key}' must be a non-negative integer"
    return tools.check_tool_messages(req)


async def _send_json(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> _Outcome:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*(headers or [_JSON]), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
    return "completed"


async def _send_body(send: Send, body: bytes, *, more: bool) -> None:
    await send({"type": "http.response.body", "body": body, "more_body": more})
