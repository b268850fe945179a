"""The Gemini API as seen through the official ``google-genai`` SDK."""

from __future__ import annotations

import httpx
import pytest
from google import genai
from google.genai import errors, types
from parley_emulator import EmulatorServer
from parley_emulator.testing import long_knowledge, png_bytes
from parley_emulator.tokens import count_text_tokens

pytestmark = pytest.mark.integration

FLASH = "gemini-2.5-flash"
PRO = "gemini-2.5-pro"
SYSTEM = (
    "You are the Parley help desk. Our store opens at 9am every weekday. "
    "Returns are accepted within 30 days of purchase."
)

SEARCH = types.FunctionDeclaration(
    name="search_knowledge",
    description="Search the knowledge base",
    parameters=types.Schema(
        type=types.Type.OBJECT,
        properties={
            "query": types.Schema(type=types.Type.STRING),
            "top_k": types.Schema(type=types.Type.INTEGER),
        },
        required=["query", "top_k"],
    ),
)
TIME = types.FunctionDeclaration(
    name="get_time",
    description="Current time in a timezone",
    parameters_json_schema={
        "type": "object",
        "properties": {"timezone": {"type": "string"}},
        "required": ["timezone"],
    },
)


def client(emu: EmulatorServer, key: str = "g-test-a", version: str | None = None) -> genai.Client:
    opts = types.HttpOptions(base_url=emu.gemini_base_url, api_version=version)
    return genai.Client(api_key=key, http_options=opts)


async def test_streaming_answer_and_usage(emu: EmulatorServer) -> None:
    c = client(emu)
    chunks = []
    stream = await c.aio.models.generate_content_stream(
        model=FLASH,
        contents="When are returns accepted?",
        config=types.GenerateContentConfig(system_instruction=SYSTEM),
    )
    async for chunk in stream:
        chunks.append(chunk)
    text = "".join(ch.text or "" for ch in chunks)
    assert len(chunks) > 3
    assert text == (
        "Based on the information I have: Returns are accepted within 30 days of purchase."
    )
    last = chunks[-1]
    assert last.candidates and last.candidates[0].finish_reason == types.FinishReason.STOP
    usage = last.usage_metadata
    assert usage is not None
    expected_prompt = count_text_tokens(SYSTEM) + count_text_tokens("When are returns accepted?")
    assert usage.prompt_token_count == expected_prompt
    assert usage.candidates_token_count == count_text_tokens(text)
    assert usage.total_token_count == expected_prompt + count_text_tokens(text)
    assert not usage.cached_content_token_count

    counted = await c.aio.models.count_tokens(model=FLASH, contents="When are returns accepted?")
    assert counted.total_tokens == count_text_tokens("When are returns accepted?")

    # v1beta is served too, and the sync client works
    beta = client(emu, version="v1beta")
    reply = beta.models.generate_content(model=FLASH, contents="Hello there")
    assert reply.text


async def test_function_call_round_trip(emu: EmulatorServer) -> None:
    c = client(emu)
    question = "What is the warranty period for headphones?"
    tools = [types.Tool(function_declarations=[TIME, SEARCH])]
    config = types.GenerateContentConfig(
        tools=tools,
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    first = await c.aio.models.generate_content(model=FLASH, contents=question, config=config)
    calls = first.function_calls
    assert calls and len(calls) == 1
    assert calls[0].name == "search_knowledge"
    assert calls[0].args == {"query": question, "top_k": 5}

    history = [
        types.Content(role="user", parts=[types.Part.from_text(text=question)]),
        first.candidates[0].content,  # type: ignore[index]
        types.Content(
            role="user",
            parts=[
                types.Part.from_function_response(
                    name="search_knowledge",
                    response={"result": "Headphones have a two year warranty period. "
                              "Cables are not covered."},
                )
            ],
        ),
    ]
    second = await c.aio.models.generate_content(model=FLASH, contents=history, config=config)
    assert not second.function_calls
    assert second.text == (
        "Based on the information I have: Headphones have a two year warranty period."
    )

    # mode NONE never calls; a forced ANY call with allowed names picks from them
    none_cfg = types.GenerateContentConfig(
        tools=tools,
        tool_config=types.ToolConfig(
            function_calling_config=types.FunctionCallingConfig(
                mode=types.FunctionCallingConfigMode.NONE)),
    )
    plain = await c.aio.models.generate_content(model=FLASH, contents=question, config=none_cfg)
    assert not plain.function_calls and plain.text
    any_cfg = types.GenerateContentConfig(
        tools=tools,
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        tool_config=types.ToolConfig(
            function_calling_config=types.FunctionCallingConfig(
                mode=types.FunctionCallingConfigMode.ANY, allowed_function_names=["get_time"])),
    )
    forced = await c.aio.models.generate_content(model=FLASH, contents="Lisbon please",
                                                 config=any_cfg)
    assert forced.function_calls and forced.function_calls[0].name == "get_time"
    assert forced.function_calls[0].args == {"timezone": "lisbon"}


async def test_streamed_function_call(emu: EmulatorServer) -> None:
    c = client(emu)
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[SEARCH])],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    calls = []
    async for chunk in await c.aio.models.generate_content_stream(
        model=FLASH, contents="How do I reset my password?", config=config
    ):
        calls.extend(chunk.function_calls or [])
    assert [call.name for call in calls] == ["search_knowledge"]


async def test_implicit_cache_on_repeated_prefix(emu: EmulatorServer) -> None:
    c = client(emu)
    knowledge = long_knowledge(1300)
    sys_tokens = count_text_tokens(knowledge)
    assert sys_tokens >= 1024
    config = types.GenerateContentConfig(system_instruction=knowledge)
    first = await c.aio.models.generate_content(
        model=FLASH, contents="How much does the premium plan cost?", config=config)
    assert first.usage_metadata is not None
    assert not first.usage_metadata.cached_content_token_count
    assert first.text and "49 euros per month" in first.text
    second = await c.aio.models.generate_content(
        model=FLASH, contents="When is support available?", config=config)
    assert second.usage_metadata is not None
    assert second.usage_metadata.cached_content_token_count == sys_tokens
    assert second.usage_metadata.prompt_token_count == sys_tokens + count_text_tokens(
        "When is support available?")

    # a different key (tenant) does not share the cache (keep a reference to the client: a
    # temporary genai.Client is closed when garbage-collected)
    other_client = client(emu, key="g-test-b")
    other = await other_client.aio.models.generate_content(
        model=FLASH, contents="When is support available?", config=config)
    assert other.usage_metadata is not None
    assert not other.usage_metadata.cached_content_token_count

    # pro-class models need 2048 tokens
    mid = long_knowledge(1500)
    assert 1024 <= count_text_tokens(mid) < 2048
    pro_cfg = types.GenerateContentConfig(system_instruction=mid)
    for _ in range(2):
        pro = await c.aio.models.generate_content(model=PRO, contents="Hi", config=pro_cfg)
        assert pro.usage_metadata is not None
        assert not pro.usage_metadata.cached_content_token_count


async def test_explicit_cached_contents(emu: EmulatorServer) -> None:
    c = client(emu)
    document = long_knowledge(1200)
    cache = await c.aio.caches.create(
        model=FLASH,
        config=types.CreateCachedContentConfig(
            contents=[types.Content(role="user", parts=[types.Part.from_text(text=document)])],
            system_instruction="Answer from the document.",
            ttl="600s",
            display_name="kb-doc",
        ),
    )
    assert cache.name and cache.name.startswith("cachedContents/")
    assert cache.display_name == "kb-doc"
    cache_tokens = count_text_tokens(document) + count_text_tokens("Answer from the document.")
    assert cache.usage_metadata is not None
    assert cache.usage_metadata.total_token_count == cache_tokens

    fetched = await c.aio.caches.get(name=cache.name)
    assert fetched.name == cache.name

    question = "Where is the headquarters located?"
    reply = await c.aio.models.generate_content(
        model=FLASH, contents=question,
        config=types.GenerateContentConfig(cached_content=cache.name),
    )
    assert reply.usage_metadata is not None
    assert reply.usage_metadata.cached_content_token_count == cache_tokens
    assert reply.usage_metadata.prompt_token_count == cache_tokens + count_text_tokens(question)
    assert reply.text and "located in Lisbon" in reply.text

    # other keys can't use it; a system instruction next to a cache is rejected
    other_client = client(emu, key="g-test-b")
    with pytest.raises(errors.ClientError) as denied:
        await other_client.aio.models.generate_content(
            model=FLASH, contents=question,
            config=types.GenerateContentConfig(cached_content=cache.name))
    assert denied.value.code == 403
    with pytest.raises(errors.ClientError) as conflict:
        await c.aio.models.generate_content(
            model=FLASH, contents=question,
            config=types.GenerateContentConfig(cached_content=cache.name,
                                               system_instruction="x"))
    assert conflict.value.code == 400

    await c.aio.caches.delete(name=cache.name)
    with pytest.raises(errors.ClientError) as gone:
        await c.aio.models.generate_content(
            model=FLASH, contents=question,
            config=types.GenerateContentConfig(cached_content=cache.name))
    assert gone.value.code == 403

    with pytest.raises(errors.ClientError, match="too small") as small:
        await c.aio.caches.create(
            model=FLASH,
            config=types.CreateCachedContentConfig(
                contents=[types.Content(role="user", parts=[types.Part.from_text(text="tiny")])]),
        )
    assert small.value.code == 400


async def test_explicit_cache_expires(emu: EmulatorServer, admin: object) -> None:
    c = client(emu)
    cache = await c.aio.caches.create(
        model=FLASH,
        config=types.CreateCachedContentConfig(
            contents=[types.Content(role="user", parts=[
                types.Part.from_text(text=long_knowledge(1100))])],
            ttl="60s",
        ),
    )
    assert cache.name
    async with httpx.AsyncClient(base_url=emu.url) as http:
        (await http.post("/admin/clock", json={"advance_s": 61})).raise_for_status()
    with pytest.raises(errors.ClientError):
        await c.aio.caches.get(name=cache.name)


async def test_images_are_counted(emu: EmulatorServer) -> None:
    c = client(emu)
    small = types.Part.from_bytes(data=png_bytes(300, 200), mime_type="image/png")
    large = types.Part.from_bytes(data=png_bytes(1000, 800), mime_type="image/png")
    q = "What is shown here?"
    r1 = await c.aio.models.generate_content(model=FLASH, contents=[small, q])
    assert r1.text and r1.text.startswith("I can see the image you shared (300x200).")
    assert r1.usage_metadata is not None
    assert r1.usage_metadata.prompt_token_count == 258 + count_text_tokens(q)
    counted = await c.aio.models.count_tokens(model=FLASH, contents=[large, q])
    assert counted.total_tokens == 2 * 2 * 258 + count_text_tokens(q)


async def test_errors_in_google_shape(emu: EmulatorServer) -> None:
    c = client(emu)
    with pytest.raises(errors.ClientError) as unknown:
        await c.aio.models.generate_content(model="palm-2", contents="hi")
    assert unknown.value.code == 404
    assert unknown.value.status == "NOT_FOUND"
    # any gemini-* id is accepted
    ok = await c.aio.models.generate_content(model="gemini-9-ultra", contents="hi")
    assert ok.model_version == "gemini-9-ultra"
    async with httpx.AsyncClient(base_url=emu.url, headers={"x-goog-api-key": "k"}) as http:
        empty = await http.post(f"/v1beta/models/{FLASH}:generateContent", json={"contents": []})
        assert empty.status_code == 400
        body = empty.json()
        assert body["error"]["status"] == "INVALID_ARGUMENT" and body["error"]["code"] == 400
        bad_tool = await http.post(
            f"/v1beta/models/{FLASH}:generateContent",
            json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                  "tools": [{"functionDeclarations": [{"name": "9bad name"}]}]},
        )
        assert bad_tool.status_code == 400
        no_key = await http.post(f"/v1/models/{FLASH}:generateContent",
                                 json={"contents": [{"parts": [{"text": "hi"}]}]},
                                 headers={"x-goog-api-key": ""})
        assert no_key.status_code == 403
