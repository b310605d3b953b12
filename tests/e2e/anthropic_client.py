"""Talks to a running `cinder serve` with the official Anthropic Python client.

Usage: anthropic_client.py BASE_URL MODEL API_KEY. Exits non-zero (with the failed assertion)
when an answer is not what Anthropic's Messages API returns.
"""
import sys

import anthropic
import openai

base_url, model, api_key = sys.argv[1:4]
client = anthropic.Anthropic(base_url=base_url, api_key=api_key, max_retries=0, timeout=600)
question = [{"role": "user", "content": "What is the capital of France?"}]
# This client leaves sampling settings to the server; older ones sent them as fields.
greedy = {"temperature": 0}

# A whole message: text content, a stop reason, token counts.
message = client.messages.create(model=model, max_tokens=12, extra_body=greedy, messages=question)
print("message:", message.model_dump_json())
assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_"), message
assert message.model == model, message.model
text = "".join(block.text for block in message.content if block.type == "text")
assert "Paris" in text, text
assert message.stop_reason in ("end_turn", "max_tokens"), message.stop_reason
assert message.usage.input_tokens > 10 and 1 <= message.usage.output_tokens <= 12, message.usage

# The same conversation through OpenAI's chat gives the same greedy text.
chat = openai.OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0, timeout=600).chat.completions.create(
    model=model, max_tokens=12, temperature=0, messages=question
)
assert chat.choices[0].message.content == text, (chat.choices[0].message.content, text)

# count_tokens counts what create read.
counted = client.messages.count_tokens(model=model, messages=question)
assert counted.input_tokens == message.usage.input_tokens, (counted, message.usage)
# The system prompt is chat's system message.
with_system = client.messages.count_tokens(model=model, system="Answer briefly.", messages=question)
chat_with_system = openai.OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0).chat.completions.create(
    model=model, max_tokens=1, messages=[{"role": "system", "content": "Answer briefly."}, *question]
)
assert with_system.input_tokens == chat_with_system.usage.prompt_tokens != counted.input_tokens, (with_system, counted)

# Streamed: the events add up to the same message.
with client.messages.stream(model=model, max_tokens=12, extra_body=greedy, messages=question) as stream:
    pieces = list(stream.text_stream)
    final = stream.get_final_message()
print("streamed:", pieces)
assert len(pieces) > 1 and "".join(pieces) == text, (pieces, text)
assert final.stop_reason == message.stop_reason and final.usage.output_tokens == message.usage.output_tokens, final

# A stop sequence ends the message, which names it, whole and streamed.
stopped = client.messages.create(model=model, max_tokens=12, extra_body=greedy, messages=question, stop_sequences=["Paris"])
assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "Paris", stopped
assert "".join(block.text for block in stopped.content) == text[:text.index("Paris")], stopped
with client.messages.stream(model=model, max_tokens=12, extra_body=greedy, messages=question, stop_sequences=["Paris"]) as stream:
    list(stream.text_stream)
    final = stream.get_final_message()
assert final.stop_reason == "stop_sequence" and final.stop_sequence == "Paris", final

# A tool round trip: the model must call the tool, the result goes back as tool_result.
tools = [{
    "name": "get_weather",
    "description": "The current weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}]
ask = [{"role": "user", "content": "What is the weather in Paris?"}]
called = client.messages.create(
    model=model, max_tokens=64, extra_body=greedy, tools=tools, tool_choice={"type": "tool", "name": "get_weather"}, messages=ask
)
print("tool_use:", called.model_dump_json())
uses = [block for block in called.content if block.type == "tool_use"]
assert called.stop_reason == "tool_use" and len(uses) >= 1, called
assert uses[0].name == "get_weather" and isinstance(uses[0].input.get("city"), str), uses[0]
assert uses[0].id.startswith("toolu_"), uses[0].id
answered = client.messages.create(
    model=model,
    max_tokens=16,
    extra_body=greedy,
    tools=tools,
    messages=[
        *ask,
        {"role": "assistant", "content": called.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "18 degrees and sunny"}]},
    ],
)
print("answer:", answered.model_dump_json())
assert answered.stop_reason in ("end_turn", "max_tokens", "tool_use"), answered.stop_reason
assert answered.usage.input_tokens > called.usage.input_tokens, (answered.usage, called.usage)

# Streamed tool use: the input arrives as input_json_delta and parses into the same call.
with client.messages.stream(
    model=model, max_tokens=64, extra_body=greedy, tools=tools, tool_choice={"type": "tool", "name": "get_weather"}, messages=ask
) as stream:
    kinds = [event.type for event in stream]
    streamed_call = stream.get_final_message()
assert kinds[0] == "message_start" and kinds[-1] == "message_stop", kinds
assert "input_json" in kinds, kinds
streamed_uses = [block for block in streamed_call.content if block.type == "tool_use"]
assert [(u.name, u.input) for u in streamed_uses] == [(u.name, u.input) for u in uses], (streamed_uses, uses)

# A wrong key is Anthropic's authentication error.
try:
    anthropic.Anthropic(base_url=base_url, api_key="wrong", max_retries=0).messages.create(model=model, max_tokens=4, messages=question)
    raise AssertionError("a wrong key was accepted")
except anthropic.AuthenticationError as e:
    assert e.body["error"]["type"] == "authentication_error", e.body
print("ok")
