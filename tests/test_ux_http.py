"""The OpenAI-compatible HTTP API of a real node subprocess, driven by the official ``openai`` package.

One node (float32, embedded chain, no swarm) serves the module: the demo adapters published by the
publisher key (legal and finance free, medical priced), then models, chat and completions (plain and
streamed, by CID and by name), errors as OpenAI exceptions, a paid call with a voucher header and its
receipt, ``/metrics`` series per adapter, and greedy text equal to what gRPC returns.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import grpc
import httpx
import openai
import pytest
from pay_fixtures import CLIENT, FINANCE, LEGAL, MEDICAL, PUBLISHER, QUESTION, raw_stub, start_node, voucher
from prometheus_client.parser import text_string_to_metric_families

from openlora.adapters.composition import Composition, part_tokens
from openlora.api.calls import CallError
from openlora.api.http.wire import http_status
from openlora.chain.contracts import adapter_id
from openlora.chain.pricing import cost_wei
from openlora.client import NodeClient, PaidSession, generate_request, register_adapter
from openlora.v1 import node_pb2 as pb

PRICE, ROYALTY, DEPOSIT = 1000, 2500, 10**15  # wei per 1k tokens, bps, wei


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    proc = start_node(tmp_path_factory.mktemp("node"))
    yield proc
    assert proc.stop() == 0, "".join(proc.stderr[-20:])


@pytest.fixture(scope="module")
def http_url(node) -> str:
    """``http://HOST:PORT`` from the ready line's ``http=HOST:PORT``."""
    m = re.search(r" http=(\S+:\d+)", node.ready_line)
    assert m, node.ready_line
    return f"http://{m.group(1)}"


@pytest.fixture(scope="module")
def oai(http_url):
    with openai.OpenAI(base_url=f"{http_url}/v1", api_key="not-used", max_retries=0, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def grpc_client(node):
    with NodeClient(node.address, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def cids(grpc_client):
    """Name → CID: legal and finance free, medical priced (registered on chain by the publisher)."""
    out = {
        name: grpc_client.publish(folder, PUBLISHER).cid for name, folder in (("legal", LEGAL), ("finance", FINANCE))
    }
    out["medical"] = grpc_client.publish(MEDICAL, PUBLISHER, price_per_1k_tokens=PRICE, royalty_bps=ROYALTY).cid
    assert register_adapter(grpc_client, out["medical"], PUBLISHER)
    return out


def test_models_lists_base_and_verified_adapters(oai, cids):
    models = {m.id: m for m in oai.models.list().data}
    assert set(models) == {"base", *cids.values()}
    assert {models[cid].name for cid in cids.values()} == set(cids)  # the alias is in an extra field


@pytest.mark.parametrize("by", ["cid", "name"])
def test_chat_completion(oai, cids, by):
    model = cids["legal"] if by == "cid" else "legal"
    r = oai.chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=12, temperature=0
    )
    assert r.object == "chat.completion" and r.model == cids["legal"]
    (choice,) = r.choices
    assert choice.message.role == "assistant"
    assert choice.message.content.startswith("Legal view:")
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 12 and r.usage.prompt_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


@pytest.mark.parametrize("by", ["cid", "name"])
def test_chat_completion_streaming(oai, cids, by):
    model = cids["finance"] if by == "cid" else "finance"
    chunks = list(
        oai.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "How do index funds work?"}],
            max_tokens=10,
            temperature=0,
            stream=True,
        )  # fmt: skip
    )
    assert len(chunks) >= 3 and all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text.startswith("Finance note:")
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].usage.completion_tokens <= 10


def test_raw_completion_streamed_ends_with_done(http_url):
    body = {"model": "base", "prompt": "The capital of France is", "max_tokens": 5, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{http_url}/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in r.iter_lines() if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["usage"]["completion_tokens"] == 5 and chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_completion(oai, cids):
    r = oai.completions.create(model="base", prompt="The capital of France is", max_tokens=6, temperature=0, seed=3)
    assert r.object == "text_completion" and r.model == "base"
    assert r.choices[0].text.strip() and r.usage.completion_tokens == 6 and r.choices[0].finish_reason == "length"


def test_unknown_model_is_not_found(oai):
    missing = "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"
    for model in (missing, "no-such-adapter"):
        with pytest.raises(openai.NotFoundError) as e:
            oai.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert e.value.body["type"] == "not_found_error"


@pytest.mark.parametrize(
    "change, says",
    [
        ({"n": 2}, "n must be 1"),
        ({"temperature": 99}, "temperature"),
        ({"max_tokens": 100_000}, "this node accepts up to"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "chat role 'robot'"),
        ({"stop": ["x"] * 20}, "stop sequences"),
    ],
)
def test_bad_input_is_bad_request(oai, change, says):
    args = {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **change}
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(**args)
    assert says in e.value.body["message"]


def test_greedy_http_equals_grpc(oai, grpc_client, cids):
    want = grpc_client.generate(QUESTION, adapter=cids["legal"], temperature=0, max_new_tokens=16).text()
    got = oai.chat.completions.create(
        model=cids["legal"], messages=[{"role": "user", "content": QUESTION}], max_tokens=16, temperature=0
    )
    assert got.choices[0].message.content == want


@pytest.fixture(scope="module")
def funded(grpc_client):
    """The client's channel with the node, holding ``DEPOSIT`` wei."""
    assert PaidSession(grpc_client, CLIENT).open_channel(DEPOSIT).deposited == DEPOSIT


def test_paid_call_with_voucher_header(oai, http_url, grpc_client, cids, funded):
    info = grpc_client.node_info()
    q = httpx.get(f"{http_url}/v1/quote", params={"model": "medical", "prompt_tokens": 40, "max_tokens": 8}).json()
    assert q["payment_required"] and q["node_address"] == info.chain.node_address
    chat = {
        "model": cids["medical"],
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": 8,
        "temperature": 0,
    }

    with pytest.raises(openai.APIStatusError) as e:
        oai.chat.completions.create(**chat)
    assert e.value.status_code == 402 and e.value.body["code"] == "PaymentRequired"

    def header(signed) -> dict:
        return {"X-OpenLoRA-Voucher": json.dumps(_voucher_json(signed))}

    forged = voucher(info, CLIENT, DEPOSIT // 2, signer=PUBLISHER, cid=cids["medical"], price=PRICE)
    with pytest.raises(openai.PermissionDeniedError):
        oai.chat.completions.create(**chat, extra_headers=header(forged))

    raw = oai.chat.completions.with_raw_response.create(
        **chat, extra_headers=header(voucher(info, CLIENT, DEPOSIT // 2, cid=cids["medical"], price=PRICE))
    )
    r = raw.parse()
    assert r.choices[0].message.content.startswith("Clinical note:")
    receipt = json.loads(raw.headers["X-OpenLoRA-Receipt"])
    assert receipt["client"] == CLIENT.address and receipt["publisher"] == PUBLISHER.address
    assert receipt["tokens"] == r.usage.total_tokens
    assert int(receipt["cost"]) == cost_wei(receipt["tokens"], int(q["price_per_1k_tokens"])) > 0

    # streamed: the receipt rides on the last chunk; the cumulative amount grows per call
    stream = oai.chat.completions.create(**chat, stream=True, extra_headers=header(voucher(info, CLIENT, DEPOSIT, cid=cids["medical"], price=PRICE)))
    streamed = list(stream)[-1].model_extra["openlora_receipt"]
    assert streamed["sequence"] > receipt["sequence"] and int(streamed["charged_total"]) > int(receipt["charged_total"])

    m = _samples(http_url)
    medical = cids["medical"]
    assert m[("openlora_payment_authorized_wei_total", frozenset({"adapter": medical}.items()))] > 0
    assert m[("openlora_payment_charged_wei_total", frozenset({"adapter": medical}.items()))] == int(
        streamed["charged_total"]
    )
    assert m[("openlora_payment_refusals_total", frozenset({"reason": "PaymentRequired"}.items()))] == 1
    assert m[("openlora_payment_refusals_total", frozenset({"reason": "InvalidVoucher"}.items()))] == 1


def _voucher_json(signed) -> dict:
    """A signed voucher as the HTTP headers carry it."""
    v = signed.voucher
    return {
        "client": v.client, "node": v.node, "epoch": v.epoch, "cumulative_amount": str(v.cumulative_amount),
        "adapter_id": "0x" + v.adapter.hex(), "price_per_1k_tokens": str(v.price_per_1k_tokens),
        "adapter_amount": str(v.adapter_amount), "signature": "0x" + signed.signature.hex(),
    }  # fmt: skip


def _samples(http_url) -> dict[tuple[str, frozenset], float]:
    text = httpx.get(f"{http_url}/metrics").text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_composition_free_over_http_and_grpc_paid_per_part(oai, http_url, grpc_client, cids, node, funded):
    """A composition of free adapters is served over HTTP (``model`` text form) as over gRPC; a bad one is a 400;
    a paid one needs its priced part's own voucher (gRPC ``AdapterPart.voucher``, HTTP ``X-OpenLoRA-Part-Vouchers``),
    which ``PaidSession`` signs, and is billed that part's weighted share on that part's receipt."""
    legal, finance, medical = cids["legal"], cids["finance"], cids["medical"]
    free = f"{legal}*0.5+{finance}*0.5"
    chat = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 8, "temperature": 0}
    over_http = oai.chat.completions.create(model=free, **chat).choices[0].message.content
    stream = grpc_client.generate(QUESTION, adapter=free, temperature=0, max_new_tokens=8)
    assert over_http == stream.text() != grpc_client.generate(QUESTION, adapter=legal, temperature=0, max_new_tokens=8).text()
    assert stream.done.adapter == stream.done.record.adapter == Composition.parse(free).id  # the record binds the parts
    verdict = grpc_client.verify(stream.served)  # the verifier rebuilds the derived adapter from the parts
    assert verdict.valid, verdict
    with pytest.raises(openai.BadRequestError, match="appears twice"):
        oai.chat.completions.create(model=f"{legal}*0.5+{legal}*0.5", **chat)

    paid = f"{medical}*0.6+{legal}*0.4"
    comp = Composition.parse(paid)

    def share(usage_tokens: int) -> int:
        return dict(zip(comp.cids, part_tokens(usage_tokens, [w for _, w in comp.parts])))[medical]

    channel, stub = raw_stub(node.address)
    with channel:
        with pytest.raises(grpc.RpcError) as e:
            list(stub.Generate(generate_request(QUESTION, adapter=paid, max_new_tokens=8, temperature=0), timeout=60))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and f"part {medical}" in e.value.details()
    quote = grpc_client.quote(generate_request(QUESTION, adapter=paid, max_new_tokens=8))
    parts = {p.adapter: p for p in quote.parts}
    assert quote.payment_required and parts[medical].payment_required and not parts[legal].payment_required
    params = {"model": paid, "prompt_tokens": quote.prompt_tokens, "max_tokens": 8}
    over_http = {p["model"]: p for p in httpx.get(f"{http_url}/v1/quote", params=params).json()["parts"]}
    assert over_http[medical]["max_cost_wei"] == parts[medical].max_cost_wei and "adapter_id" not in over_http[legal]

    # the SDK: PaidSession signs the paid part's voucher, and checks its receipt bills exactly that part's share
    session = PaidSession(grpc_client, CLIENT)
    stream = session.generate(QUESTION, adapter=paid, max_new_tokens=8, temperature=0)
    text = stream.text()
    (receipt,) = stream.receipts  # the free part is billed nothing
    billed = stream.done.usage.prompt_tokens + stream.done.usage.completion_tokens
    assert stream.receipt is None and receipt.tokens == share(billed) and receipt.cost == cost_wei(receipt.tokens, PRICE) > 0
    assert receipt.adapter == adapter_id(medical, PUBLISHER.address) and receipt.publisher == PUBLISHER.address

    # HTTP: the part's voucher in X-OpenLoRA-Part-Vouchers, its receipt in X-OpenLoRA-Part-Receipts
    with pytest.raises(openai.APIStatusError) as e:
        oai.chat.completions.create(model=paid, **chat)
    assert e.value.status_code == 402 and "X-OpenLoRA-Part-Vouchers" in e.value.message
    with pytest.raises(openai.PermissionDeniedError, match="X-OpenLoRA-Part-Vouchers must be"):
        oai.chat.completions.create(model=paid, **chat, extra_headers={"X-OpenLoRA-Part-Vouchers": "[]"})
    info = grpc_client.node_info()
    amount = session.payer().signed_amount + 10**9  # above every voucher this client signed so far
    signed = voucher(info, CLIENT, amount, cid=medical, price=PRICE)
    raw = oai.chat.completions.with_raw_response.create(
        model=paid, **chat, extra_headers={"X-OpenLoRA-Part-Vouchers": json.dumps({medical: _voucher_json(signed)})}
    )
    assert raw.parse().choices[0].message.content == text  # greedy: the same composition, the same text
    (got,) = json.loads(raw.headers["X-OpenLoRA-Part-Receipts"])
    assert "X-OpenLoRA-Receipt" not in raw.headers and got["tokens"] == share(raw.parse().usage.total_tokens)
    assert got["adapter_id"] == "0x" + receipt.adapter.hex() and int(got["cost"]) == cost_wei(got["tokens"], PRICE)
    assert got["sequence"] > receipt.sequence


def test_metrics_have_per_adapter_series(oai, http_url, cids):
    cid = cids["legal"]
    for _ in range(2):  # the second call finds the adapter in its device slot
        oai.chat.completions.create(
            model=cid, messages=[{"role": "user", "content": "hi"}], max_tokens=3, temperature=0
        )
    m = _samples(http_url)
    assert m[("openlora_requests_total", frozenset({"api": "http", "adapter": cid, "code": "OK"}.items()))] >= 2
    assert (
        m[("openlora_requests_total", frozenset({"api": "http", "adapter": "unresolved", "code": "NOT_FOUND"}.items()))]
        >= 1
    )
    assert m[("openlora_tokens_total", frozenset({"adapter": cid, "kind": "completion"}.items()))] >= 6
    assert m[("openlora_tokens_total", frozenset({"adapter": cid, "kind": "prompt"}.items()))] > 6
    assert m[("openlora_ttft_seconds_count", frozenset({"adapter": cid}.items()))] >= 2
    assert m[("openlora_itl_seconds_count", frozenset({"adapter": cid}.items()))] >= 4
    assert m[("openlora_adapter_load_seconds_count", frozenset({"adapter": cid}.items()))] >= 1
    assert m[("openlora_cache_lookups_total", frozenset({"tier": "device", "result": "hit"}.items()))] >= 1
    assert m[("openlora_cache_lookups_total", frozenset({"tier": "host", "result": "miss"}.items()))] >= 1
    assert m[("openlora_queue_waiting", frozenset())] == 0


def test_a_non_streaming_client_that_leaves_frees_its_row(http_url):
    body = {"model": "base", "messages": [{"role": "user", "content": "Count to a thousand."}], "max_tokens": 500,
            "temperature": 0, "stop": []}  # fmt: skip
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{http_url}/v1/chat/completions", json=body, timeout=2.0)
    cancelled = ("openlora_requests_total", frozenset({"api": "http", "adapter": "base", "code": "CANCELLED"}.items()))
    deadline = time.monotonic() + 60  # 500 tokens would take minutes here; the cancel takes a poll interval
    while (m := _samples(http_url))[("openlora_running", frozenset())] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert m[("openlora_running", frozenset())] == 0
    assert m.get(cancelled, 0) >= 1


def test_health_and_not_found_route(http_url):
    assert httpx.get(f"{http_url}/health").json() == {"status": "serving"}
    r = httpx.get(f"{http_url}/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


@pytest.mark.parametrize(
    "code, payment_error, status",
    [
        ("INVALID_ARGUMENT", None, 400),
        ("NOT_FOUND", None, 404),
        ("FAILED_PRECONDITION", None, 422),
        ("RESOURCE_EXHAUSTED", None, 429),
        ("UNAVAILABLE", None, 503),
        ("INTERNAL", None, 500),
        ("FAILED_PRECONDITION", "PaymentRequired", 402),
        ("FAILED_PRECONDITION", "InsufficientAuthorization", 402),
        ("PERMISSION_DENIED", "InvalidVoucher", 403),
        ("NOT_FOUND", "AdapterNotPayable", 404),
        ("UNAVAILABLE", "CreditLimitReached", 503),
    ],
)
def test_http_status_of_core_errors(code, payment_error, status):
    assert http_status(CallError(grpc.StatusCode[code], "x", payment_error=payment_error)) == status


def test_rate_limit_is_429_with_retry_after(http_url):
    """The node's per-client bucket (defaults: 50 requests/s, burst 100) also guards HTTP calls."""
    with httpx.Client(base_url=http_url, headers={"x-openlora-client": "burst-test"}) as c:
        for _ in range(1000):
            r = c.get("/v1/quote", params={"model": "base", "prompt_tokens": 4, "max_tokens": 4})
            if r.status_code != 200:
                break
    assert r.status_code == 429, r.text
    assert r.json()["error"]["type"] == "rate_limit_error" and int(r.headers["Retry-After"]) >= 1
    assert httpx.get(f"{http_url}/v1/quote", params={"model": "base", "prompt_tokens": 4}).status_code == 200


def test_http_server_refuses_a_taken_port_and_stops_serving():
    from fastapi import FastAPI

    from openlora.api.http import HttpServer

    async def run() -> None:
        first = HttpServer(FastAPI(), "127.0.0.1", 0)
        await first.start()
        assert first.port > 0
        with pytest.raises(RuntimeError, match=f"cannot listen for HTTP on 127.0.0.1:{first.port}"):
            await HttpServer(FastAPI(), "127.0.0.1", first.port).start()
        await first.stop(grace_s=0)
        assert first.app.state.ready is False
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient() as c:
                await c.get(f"http://127.0.0.1:{first.port}/")

    asyncio.run(run())


PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 16}, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def test_response_format_over_http_and_grpc_and_the_constrained_call_verifies(oai, http_url, grpc_client, cids):
    import jsonschema
    from google.protobuf import json_format

    from openlora.v1 import node_pb2 as pb

    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    r = oai.chat.completions.create(
        model=cids["legal"], messages=[{"role": "user", "content": "Who wrote the contract?"}], max_tokens=48,
        temperature=0, response_format=fmt,
    )  # fmt: skip
    jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)
    served = json_format.ParseDict(r.model_extra["openlora_served"], pb.ServedCall())
    assert json.loads(served.record.constraint) == {"type": "json_schema", "schema": PERSON}
    verdict = grpc_client.verify(served)
    assert verdict.valid, verdict
    stream = grpc_client.generate(
        QUESTION, adapter=cids["finance"], temperature=0.8, seed=5, max_new_tokens=48,
        response_format=pb.ResponseFormat(json_schema=json.dumps(PERSON)),
    )  # fmt: skip
    jsonschema.validate(json.loads(stream.text()), PERSON)
    assert grpc_client.verify(stream.served).valid
    body = {"model": "base", "prompt": "Time of the meeting:", "max_tokens": 8, "temperature": 0,
            "response_format": {"type": "regex", "regex": "([01][0-9]|2[0-3]):[0-5][0-9]"}}  # fmt: skip
    text = httpx.post(f"{http_url}/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]
    assert re.fullmatch("([01][0-9]|2[0-3]):[0-5][0-9]", text), text
    obj = oai.chat.completions.create(
        model="base", messages=[{"role": "user", "content": 'Return a JSON object with keys "city" and "country" for Paris.'}],
        max_tokens=32,
        temperature=0, response_format={"type": "json_object"},
    )  # fmt: skip
    assert isinstance(json.loads(obj.choices[0].message.content), dict)


@pytest.mark.parametrize(
    "fmt, says",
    [
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}, 'Unsupported type "objekt"'),
        ({"type": "regex", "regex": "(("}, "parenthesis is not closed"),
        ({"type": "json_schema"}, 'needs a "json_schema"'),
        ({"type": "json_schema", "json_schema": {"schema": {"enum": ["x" * 100] * 200}}}, "the limit is 16384"),
    ],
)
def test_a_constraint_that_cannot_compile_is_bad_request_and_the_node_keeps_serving(oai, grpc_client, cids, fmt, says):
    from openlora.v1 import node_pb2 as pb

    args = {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    with pytest.raises(openai.BadRequestError) as e:  # the priced adapter without a voucher: refused before pricing
        oai.chat.completions.create(response_format=fmt, **{**args, "model": cids["medical"]})
    assert says in e.value.body["message"] and e.value.body["type"] == "invalid_request_error"
    if fmt.get("regex"):
        with pytest.raises(grpc.RpcError) as g:
            grpc_client.generate("hi", max_new_tokens=4, response_format=pb.ResponseFormat(regex=fmt["regex"])).text()
        assert g.value.code() == grpc.StatusCode.INVALID_ARGUMENT and says in g.value.details()
    assert oai.chat.completions.create(temperature=0, **args).choices[0].message.content
