"""The OpenAI Python SDK, configured as a user would, against tollgate.

Run by tests/python_sdk.rs, which starts the gateway and the mock upstream
and passes their address in TOLLGATE_BASE_URL. The users come from the
harness configuration in tests/common/mod.rs: bob has a large budget and
alice 1,000 tokens. The gateway allows the models gpt-4o-mini, gpt-5* and
text-embedding-3-small, with at most 8,000 input tokens a request.
"""

import os
import time
import unittest

import openai
from openai import AsyncOpenAI, OpenAI

BASE_URL = os.environ["TOLLGATE_BASE_URL"] + "/v1"


def client(key):
    # No retries, so each assertion sees exactly one gateway answer.
    return OpenAI(base_url=BASE_URL, api_key=key, max_retries=0)


def async_client(key):
    return AsyncOpenAI(base_url=BASE_URL, api_key=key, max_retries=0)


class ChatCompletions(unittest.TestCase):
    def test_json(self):
        completion = client("bob-key").chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Say hello."}],
            max_completion_tokens=12,
        )
        self.assertTrue(completion.choices[0].message.content)
        self.assertEqual(completion.usage.completion_tokens, 12)
        self.assertEqual(
            completion.usage.total_tokens,
            completion.usage.prompt_tokens + completion.usage.completion_tokens,
        )

    def test_stream_without_usage(self):
        stream = client("bob-key").chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Count."}],
            max_completion_tokens=8,
            stream=True,
        )
        chunks = list(stream)
        self.assertGreater(len(chunks), 2)
        for chunk in chunks:
            self.assertIsNone(chunk.usage)
            self.assertTrue(chunk.choices, "a usage-only chunk reached the client")
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        self.assertTrue(text)

    def test_stream_with_usage(self):
        stream = client("bob-key").chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Count."}],
            max_completion_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(chunks[-1].usage.completion_tokens, 8)


class Responses(unittest.TestCase):
    def test_json(self):
        response = client("bob-key").responses.create(
            model="gpt-5-codex", input="Write a haiku.", max_output_tokens=16
        )
        self.assertEqual(response.status, "completed")
        self.assertTrue(response.output_text)
        self.assertEqual(response.usage.output_tokens, 16)

    def test_stream(self):
        stream = client("bob-key").responses.create(
            model="gpt-5-codex", input="Write a haiku.", stream=True
        )
        events = list(stream)
        types = [event.type for event in events]
        # The full sequence a streaming client such as Codex expects, with
        # the run of deltas counted once.
        distinct = [t for i, t in enumerate(types) if i == 0 or t != types[i - 1]]
        self.assertEqual(
            distinct,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ],
        )
        numbers = [event.sequence_number for event in events]
        self.assertEqual(numbers, list(range(len(events))))
        self.assertGreater(events[-1].response.usage.total_tokens, 0)


class Async(unittest.IsolatedAsyncioTestCase):
    async def test_chat_json(self):
        async with async_client("bob-key") as bob:
            completion = await bob.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "Say hello."}],
                max_completion_tokens=12,
            )
        self.assertTrue(completion.choices[0].message.content)
        self.assertEqual(completion.usage.completion_tokens, 12)

    async def test_chat_stream(self):
        async with async_client("bob-key") as bob:
            stream = await bob.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "Count."}],
                max_completion_tokens=8,
                stream=True,
            )
            chunks = [chunk async for chunk in stream]
        self.assertGreater(len(chunks), 2)
        for chunk in chunks:
            self.assertTrue(chunk.choices, "a usage-only chunk reached the client")

    async def test_responses_json(self):
        async with async_client("bob-key") as bob:
            response = await bob.responses.create(
                model="gpt-5-codex", input="Write a haiku.", max_output_tokens=16
            )
        self.assertEqual(response.status, "completed")
        self.assertEqual(response.usage.output_tokens, 16)

    async def test_responses_stream(self):
        async with async_client("bob-key") as bob:
            stream = await bob.responses.create(
                model="gpt-5-codex", input="Write a haiku.", stream=True
            )
            events = [event async for event in stream]
        self.assertEqual(events[0].type, "response.created")
        self.assertEqual(events[-1].type, "response.completed")
        numbers = [event.sequence_number for event in events]
        self.assertEqual(numbers, list(range(len(events))))

    async def test_unknown_key_raises_authentication_error(self):
        async with async_client("not-a-key") as stranger:
            with self.assertRaises(openai.AuthenticationError):
                await stranger.models.list()


class EmbeddingsAndModels(unittest.TestCase):
    def test_embeddings(self):
        result = client("bob-key").embeddings.create(
            model="text-embedding-3-small", input=["first", "second"]
        )
        self.assertEqual(len(result.data), 2)
        self.assertGreater(len(result.data[0].embedding), 0)
        self.assertGreater(result.usage.prompt_tokens, 0)

    def test_models_list_and_retrieve(self):
        bob = client("bob-key")
        ids = [model.id for model in bob.models.list()]
        self.assertIn("gpt-4o-mini", ids)
        self.assertEqual(bob.models.retrieve("gpt-4o-mini").id, "gpt-4o-mini")


class Errors(unittest.TestCase):
    def test_unknown_key_raises_authentication_error(self):
        with self.assertRaises(openai.AuthenticationError) as raised:
            client("not-a-key").chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
        self.assertEqual(raised.exception.status_code, 401)
        self.assertEqual(raised.exception.code, "invalid_api_key")

    def test_disallowed_model_raises_permission_denied(self):
        with self.assertRaises(openai.PermissionDeniedError) as raised:
            client("bob-key").chat.completions.create(
                model="o3", messages=[{"role": "user", "content": "hi"}]
            )
        self.assertEqual(raised.exception.status_code, 403)
        self.assertEqual(raised.exception.code, "model_not_allowed")
        self.assertEqual(raised.exception.param, "model")
        self.assertIn("'o3' is not allowed", raised.exception.message)

    def test_long_input_raises_bad_request(self):
        with self.assertRaises(openai.BadRequestError) as raised:
            client("bob-key").responses.create(
                model="gpt-5-codex", input="word " * 20_000
            )
        self.assertEqual(raised.exception.status_code, 400)
        self.assertEqual(raised.exception.code, "context_length_exceeded")
        self.assertIn("over this key's limit of 8000", raised.exception.message)

    def test_spent_budget_raises_rate_limit_error(self):
        # The SDK's default of two retries stays on: the gateway's
        # `x-should-retry: false` must stop them.
        alice = OpenAI(base_url=BASE_URL, api_key="alice-key")
        error = None
        for _ in range(50):
            started = time.monotonic()
            try:
                alice.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": "Say hello."}],
                    max_completion_tokens=50,
                )
            except openai.RateLimitError as raised:
                error = raised
                # A retry waits at least 0.375 s first: the SDK's initial
                # delay of 0.5 s less up to 25% jitter (openai 2.54.0).
                self.assertLess(time.monotonic() - started, 0.3, "the SDK retried")
                break
        self.assertIsNotNone(error, "alice's 1,000-token budget never ran out")
        self.assertEqual(error.status_code, 429)
        self.assertEqual(error.code, "insufficient_quota")
        self.assertIn("Token budget exhausted", error.message)
        self.assertTrue(error.response.headers.get("retry-after"))


if __name__ == "__main__":
    unittest.main()
