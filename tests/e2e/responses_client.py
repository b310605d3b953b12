"""Talks to a running `cinder serve` through the OpenAI Python client's Responses API.

Usage: responses_client.py BASE_URL MODEL API_KEY. Exits non-zero (with the failed assertion)
when an answer is not what OpenAI's Responses API returns.
"""
import json
import sys

import openai

base_url, model, api_key = sys.argv[1:4]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=600)
question = "What is the capital of France?"

# A whole response: one message item with output_text, usage, stored.
response = client.responses.create(model=model, input=question, max_output_tokens=12, temperature=0)
print("response:", response.model_dump_json())
assert response.object == "response" and response.id.startswith("resp_") and response.model == model, response
assert "Paris" in response.output_text, response.output_text
assert response.status in ("completed", "incomplete"), response.status
assert response.output[0].type == "message" and response.output[0].role == "assistant", response.output
usage = response.usage
assert usage.input_tokens > 10 and 1 <= usage.output_tokens <= 12 and usage.total_tokens == usage.input_tokens + usage.output_tokens, usage

# Chat on the same prompt gives the same greedy text.
chat = client.chat.completions.create(model=model, max_tokens=12, temperature=0, messages=[{"role": "user", "content": question}])
assert chat.choices[0].message.content == response.output_text, (chat.choices[0].message.content, response.output_text)

# Streamed: typed events with sequence numbers, deltas adding up to the same text.
events = list(client.responses.create(model=model, input=question, max_output_tokens=12, temperature=0, stream=True))
kinds = [event.type for event in events]
print("streamed:", kinds)
assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"], kinds
assert kinds[-1] in ("response.completed", "response.incomplete"), kinds
assert [event.sequence_number for event in events] == list(range(len(events)))
deltas = "".join(event.delta for event in events if event.type == "response.output_text.delta")
assert deltas == response.output_text and events[-1].response.output_text == deltas, (deltas, response.output_text)

# Stored: retrieved by id, then deleted.
again = client.responses.retrieve(response.id)
assert again.id == response.id and again.output_text == response.output_text, again
client.responses.delete(response.id)
try:
    client.responses.retrieve(response.id)
    raise AssertionError("a deleted response was still there")
except openai.NotFoundError:
    pass

# A function tool round trip, the second turn carried on by previous_response_id.
tools = [{
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}]
ask = "What is the weather in Paris?"
called = client.responses.create(
    model=model, input=ask, tools=tools, tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=64, temperature=0
)
print("call:", called.model_dump_json())
call = called.output[0]
# The response echoes the request's tools and choice.
assert [t.name for t in called.tools] == ["get_weather"] and called.tool_choice.name == "get_weather", (called.tools, called.tool_choice)
assert call.type == "function_call" and call.name == "get_weather", called.output
assert isinstance(json.loads(call.arguments)["city"], str), call.arguments
answered = client.responses.create(
    model=model,
    previous_response_id=called.id,
    input=[{"type": "function_call_output", "call_id": call.call_id, "output": "18 degrees and sunny"}],
    tools=tools,
    max_output_tokens=16,
    temperature=0,
)
print("answer:", answered.model_dump_json())
assert answered.previous_response_id == called.id
# The first turn's question and call are in the prompt again.
assert answered.usage.input_tokens > called.usage.input_tokens + 10, (answered.usage, called.usage)

# Streamed, the call's arguments come as function_call_arguments events.
events = list(client.responses.create(
    model=model, input=ask, tools=tools, tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=64,
    temperature=0, stream=True,
))
kinds = [event.type for event in events]
assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds, kinds
streamed_call = events[-1].response.output[0]
assert (streamed_call.name, json.loads(streamed_call.arguments)) == (call.name, json.loads(call.arguments)), streamed_call

# text.format: the answer follows the schema.
schema = {"type": "object", "properties": {"capital": {"type": "string"}}, "required": ["capital"], "additionalProperties": False}
shaped = client.responses.create(
    model=model, input=question, max_output_tokens=40, temperature=0,
    text={"format": {"type": "json_schema", "name": "capital", "schema": schema, "strict": True}},
)
assert isinstance(json.loads(shaped.output_text)["capital"], str), shaped.output_text

# What is not implemented is refused by name.
for extra, name in [({"background": True}, "background"), ({"tools": [{"type": "web_search"}]}, "web_search")]:
    try:
        client.responses.create(model=model, input=question, max_output_tokens=4, **extra)
        raise AssertionError(f"{name} was accepted")
    except openai.BadRequestError as e:
        assert name in str(e), e
print("ok")
