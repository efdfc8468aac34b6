"""The official `openai` Python client against `llm-quantize serve` (run by tests/serve.rs).

Usage: python3 serve_openai_client.py BASE_URL API_KEY MODEL

Checks chat and text completions, streaming (with usage), stop sequences, finish
reasons, seeds, and error cases. Exits 0 when every check passes; any failure raises
(exit 1); a missing `openai` package exits 2 with a clear message.
"""

import sys

try:
    import openai
except ImportError as e:  # never a silent skip: the Rust test fails on this
    print(
        f"the `openai` Python package is missing ({e}): "
        "run `python3 -m pip install openai` (scripts/test.sh does)",
        file=sys.stderr,
    )
    sys.exit(2)

base_url, api_key, model = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=60)
checks = []


def check(name, cond, detail=""):
    if not cond:
        raise AssertionError(f"{name}: {detail}")
    checks.append(name)


# --- models -----------------------------------------------------------------------
ids = [m.id for m in client.models.list().data]
check("models.list", ids == [model], ids)

# --- chat, non-streamed -----------------------------------------------------------
msgs = [
    {"role": "system", "content": "You are a sailor."},
    {"role": "user", "content": "Tell me about the whale and the sea."},
]
chat = client.chat.completions.create(model=model, messages=msgs, max_tokens=24, temperature=0)
c0 = chat.choices[0]
check("chat.object", chat.object == "chat.completion", chat.object)
check("chat.role", c0.message.role == "assistant", c0.message.role)
check("chat.content", isinstance(c0.message.content, str) and c0.message.content != "", c0)
check("chat.finish_reason", c0.finish_reason in ("stop", "length"), c0.finish_reason)
u = chat.usage
check("chat.usage", u.prompt_tokens > 5 and 0 < u.completion_tokens <= 24, u)
check("chat.usage.total", u.total_tokens == u.prompt_tokens + u.completion_tokens, u)
if c0.finish_reason == "length":
    check("chat.length", u.completion_tokens == 24, u)

# --- chat, streamed with usage: same greedy text --------------------------------
stream = client.chat.completions.create(
    model=model,
    messages=msgs,
    max_tokens=24,
    temperature=0,
    stream=True,
    stream_options={"include_usage": True},
)
parts, finish, usage, roles = [], None, None, []
for chunk in stream:
    check("chat.stream.object", chunk.object == "chat.completion.chunk", chunk.object)
    if chunk.usage is not None:
        usage = chunk.usage
    for ch in chunk.choices:
        if ch.delta.role:
            roles.append(ch.delta.role)
        if ch.delta.content:
            parts.append(ch.delta.content)
        if ch.finish_reason:
            finish = ch.finish_reason
check("chat.stream.role", roles == ["assistant"], roles)
check("chat.stream.text", "".join(parts) == c0.message.content, ("".join(parts), c0.message.content))
check("chat.stream.pieces", len(parts) > 1, parts)
check("chat.stream.finish", finish == c0.finish_reason, finish)
check("chat.stream.usage", usage is not None and usage.completion_tokens == u.completion_tokens
      and usage.prompt_tokens == u.prompt_tokens, usage)

# --- text completion, non-streamed and streamed --------------------------------
prompt = "The whale"
comp = client.completions.create(model=model, prompt=prompt, max_tokens=32, temperature=0)
text = comp.choices[0].text
check("completion.object", comp.object == "text_completion", comp.object)
check("completion.text", isinstance(text, str) and len(text) > 0, comp)
check("completion.usage", comp.usage.prompt_tokens >= 2 and comp.usage.completion_tokens > 0, comp.usage)
s = client.completions.create(
    model=model, prompt=prompt, max_tokens=32, temperature=0, stream=True,
    stream_options={"include_usage": True},
)
sparts, sfinish, susage = [], None, None
for chunk in s:
    if chunk.usage is not None:
        susage = chunk.usage
    for ch in chunk.choices:
        sparts.append(ch.text)
        if ch.finish_reason:
            sfinish = ch.finish_reason
check("completion.stream.text", "".join(sparts) == text, ("".join(sparts), text))
check("completion.stream.finish", sfinish == comp.choices[0].finish_reason, sfinish)
check("completion.stream.usage", susage is not None and susage.completion_tokens == comp.usage.completion_tokens, susage)

# --- finish_reason length --------------------------------------------------------
short = client.completions.create(model=model, prompt=prompt, max_tokens=3, temperature=0)
check("length.finish", short.choices[0].finish_reason == "length", short.choices[0])
check("length.usage", short.usage.completion_tokens == 3, short.usage)
check("length.prefix", text.startswith(short.choices[0].text), (short.choices[0].text, text))

# --- stop sequences: cut at the first match, finish_reason stop -----------------
# a stop string taken from the middle of the greedy text
words = [w for w in text.split() if len(w) >= 2]
check("stop.candidates", len(words) >= 2, text)
stop_word = words[len(words) // 2]
expect = text[: text.find(stop_word)]
for streamed in (False, True):
    if streamed:
        r = client.completions.create(model=model, prompt=prompt, max_tokens=32, temperature=0,
                                      stop=["@@never@@", stop_word], stream=True)
        got, fin = "", None
        for chunk in r:
            for ch in chunk.choices:
                got += ch.text
                fin = ch.finish_reason or fin
    else:
        r = client.completions.create(model=model, prompt=prompt, max_tokens=32, temperature=0,
                                      stop=["@@never@@", stop_word])
        got, fin = r.choices[0].text, r.choices[0].finish_reason
    check(f"stop.text(stream={streamed})", got == expect, (got, expect, stop_word))
    check(f"stop.finish(stream={streamed})", fin == "stop", fin)
rc = client.chat.completions.create(model=model, messages=msgs, max_tokens=24, temperature=0,
                                    stop=c0.message.content.split()[1])
check("chat.stop", rc.choices[0].finish_reason == "stop"
      and c0.message.content.startswith(rc.choices[0].message.content)
      and len(rc.choices[0].message.content) < len(c0.message.content), rc.choices[0])

# --- sampling parameters; seeds reproduce ----------------------------------------
kw = dict(model=model, prompt=prompt, max_tokens=16, temperature=0.9, top_p=0.9, seed=1234,
          presence_penalty=0.5, frequency_penalty=0.3, extra_body={"top_k": 20, "min_p": 0.02})
a = client.completions.create(**kw).choices[0].text
b = client.completions.create(**kw).choices[0].text
check("seed.reproducible", a == b, (a, b))

# --- errors: OpenAI-shaped, right status, the client raises the right class -----
def expect_error(name, cls, status, fn):
    try:
        fn()
    except cls as e:
        check(name + ".status", e.status_code == status, e.status_code)
        body = e.body if isinstance(e.body, dict) else {}
        check(name + ".body", isinstance(body.get("message"), str) and body.get("type"), e.body)
        return
    raise AssertionError(f"{name}: no {cls.__name__} raised")


expect_error("error.unknown_model", openai.NotFoundError, 404,
             lambda: client.chat.completions.create(model="no-such-model", messages=msgs, max_tokens=4))
expect_error("error.negative_max_tokens", openai.BadRequestError, 400,
             lambda: client.completions.create(model=model, prompt=prompt, max_tokens=-5))
expect_error("error.empty_messages", openai.BadRequestError, 400,
             lambda: client.chat.completions.create(model=model, messages=[], max_tokens=4))
expect_error("error.n", openai.BadRequestError, 400,
             lambda: client.completions.create(model=model, prompt=prompt, max_tokens=4, n=2))
bad = openai.OpenAI(base_url=base_url, api_key="wrong-key", max_retries=0, timeout=30)
expect_error("error.api_key", openai.AuthenticationError, 401, lambda: bad.models.list())

print(f"openai {openai.__version__}: {len(checks)} checks passed")
