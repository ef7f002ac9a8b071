// The OpenAI Node SDK (npm package `openai`), configured as a user would,
// against tollgate.
//
// Run with `node --test` by tests/node_sdk.rs, which starts the gateway and
// the mock upstream and passes their address in TOLLGATE_BASE_URL. The users
// come from the harness configuration in tests/common/mod.rs: bob has a large
// budget and alice 1,000 tokens. The gateway allows the models gpt-4o-mini,
// gpt-5* and text-embedding-3-small, with at most 8,000 input tokens a
// request.

import assert from "node:assert/strict";
import { test } from "node:test";

import OpenAI from "openai";

const baseURL = `${process.env.TOLLGATE_BASE_URL}/v1`;

// No retries unless a test requests them, so each assertion sees one gateway
// answer.
function client(apiKey, options = { maxRetries: 0 }) {
  return new OpenAI({ baseURL, apiKey, ...options });
}

test("chat completion returns usage", async () => {
  const completion = await client("bob-key").chat.completions.create({
    model: "gpt-4o-mini",
    messages: [{ role: "user", content: "Say hello." }],
    max_completion_tokens: 12,
  });
  assert.ok(completion.choices[0].message.content);
  assert.equal(completion.usage.completion_tokens, 12);
  assert.equal(
    completion.usage.total_tokens,
    completion.usage.prompt_tokens + completion.usage.completion_tokens,
  );
});

test("chat stream has no added usage chunk", async () => {
  const stream = await client("bob-key").chat.completions.create({
    model: "gpt-4o-mini",
    messages: [{ role: "user", content: "Count." }],
    max_completion_tokens: 8,
    stream: true,
  });
  const chunks = [];
  for await (const chunk of stream) {
    chunks.push(chunk);
  }
  assert.ok(chunks.length > 2);
  for (const chunk of chunks) {
    assert.equal(chunk.usage ?? null, null);
    assert.ok(chunk.choices.length > 0, "a usage-only chunk reached the client");
  }
  const text = chunks.map((chunk) => chunk.choices[0].delta.content ?? "").join("");
  assert.ok(text.length > 0);
});

test("response returns output text", async () => {
  const response = await client("bob-key").responses.create({
    model: "gpt-5-codex",
    input: "Write a haiku.",
    max_output_tokens: 16,
  });
  assert.equal(response.status, "completed");
  assert.ok(response.output_text);
  assert.equal(response.usage.output_tokens, 16);
});

test("response stream ends with completed event", async () => {
  const stream = await client("bob-key").responses.create({
    model: "gpt-5-codex",
    input: "Write a haiku.",
    stream: true,
  });
  const events = [];
  for await (const event of stream) {
    events.push(event);
  }
  const types = events.map((event) => event.type);
  assert.equal(types[0], "response.created");
  assert.equal(types.at(-1), "response.completed");
  assert.ok(types.includes("response.output_text.delta"));
  const numbers = events.map((event) => event.sequence_number);
  assert.deepEqual(numbers, [...numbers.keys()]);
  assert.ok(events.at(-1).response.usage.total_tokens > 0);
});

test("embeddings return one vector per input", async () => {
  const result = await client("bob-key").embeddings.create({
    model: "text-embedding-3-small",
    input: ["first", "second"],
  });
  assert.equal(result.data.length, 2);
  assert.ok(result.data[0].embedding.length > 0);
  assert.ok(result.usage.prompt_tokens > 0);
});

test("models list pages through the catalogue", async () => {
  const ids = [];
  for await (const model of client("bob-key").models.list()) {
    ids.push(model.id);
  }
  assert.ok(ids.includes("gpt-4o-mini"), `models: ${ids}`);
  const model = await client("bob-key").models.retrieve("gpt-4o-mini");
  assert.equal(model.id, "gpt-4o-mini");
});

test("unknown key raises AuthenticationError", async () => {
  const request = client("not-a-key").chat.completions.create({
    model: "gpt-4o-mini",
    messages: [{ role: "user", content: "hi" }],
  });
  await assert.rejects(request, (error) => {
    assert.ok(error instanceof OpenAI.AuthenticationError, String(error));
    assert.equal(error.status, 401);
    assert.equal(error.code, "invalid_api_key");
    return true;
  });
});

test("disallowed model raises PermissionDeniedError", async () => {
  const request = client("bob-key").chat.completions.create({
    model: "o3",
    messages: [{ role: "user", content: "hi" }],
  });
  await assert.rejects(request, (error) => {
    assert.ok(error instanceof OpenAI.PermissionDeniedError, String(error));
    assert.equal(error.status, 403);
    assert.equal(error.code, "model_not_allowed");
    assert.equal(error.param, "model");
    assert.match(error.message, /'o3' is not allowed/);
    return true;
  });
});

test("long input raises BadRequestError", async () => {
  const request = client("bob-key").responses.create({
    model: "gpt-5-codex",
    input: "word ".repeat(20_000),
  });
  await assert.rejects(request, (error) => {
    assert.ok(error instanceof OpenAI.BadRequestError, String(error));
    assert.equal(error.status, 400);
    assert.equal(error.code, "context_length_exceeded");
    assert.match(error.message, /over this key's limit of 8000/);
    return true;
  });
});

test("spent budget raises RateLimitError without retries", async () => {
  // The SDK's default of two retries stays on: the gateway's
  // `x-should-retry: false` must stop them.
  const alice = client("alice-key", {});
  let error = null;
  for (let attempt = 0; attempt < 50 && error === null; attempt += 1) {
    const started = Date.now();
    try {
      await alice.chat.completions.create({
        model: "gpt-4o-mini",
        messages: [{ role: "user", content: "Say hello." }],
        max_completion_tokens: 50,
      });
    } catch (raised) {
      error = raised;
      // A retry waits at least 375 ms first: the SDK's initial delay of
      // 0.5 s less up to 25% jitter (openai 6.49.0).
      assert.ok(Date.now() - started < 300, "the SDK retried a spent budget");
    }
  }
  assert.ok(error !== null, "alice's 1,000-token budget never ran out");
  assert.ok(error instanceof OpenAI.RateLimitError, String(error));
  assert.equal(error.status, 429);
  assert.equal(error.code, "insufficient_quota");
  assert.match(error.message, /Token budget exhausted/);
  assert.ok(error.headers.get("retry-after"));
});
