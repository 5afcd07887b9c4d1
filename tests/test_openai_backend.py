"""The ``openai`` backend against a small HTTP server of the test's own, which answers, fails, hangs or dies on cue.

The real vLLM server is in ``test_engines.py``; here each fault is produced exactly, so its outcome and its time
bound can be checked: every failing image ends as a ``backend_error`` row, the rest of the batch is scored, and
the run ends in bounded time.
"""

import json
import logging
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

pytest.importorskip("openai", reason="needs the openai extra")

from qponder_plugin.backend import BackendError  # noqa: E402
from qponder_plugin.parsing import LEVELS  # noqa: E402
from qponder_plugin.scorer import Scorer  # noqa: E402

MODEL = "served-model"
ANSWER = "<think>Sharp and clean.</think><answer>3.50</answer>"
SECRET = "sk-test-never-logged-0123456789"


def choice(text: str, logprobs: bool = True) -> dict:
    """One chat choice whose answer digit "3" carries p=0.5 (the other half on "4"), tenths digit "5" p=1."""
    tokens = [text[:-13], "3", ".", "5", "0", "</answer>"] if text.endswith("3.50</answer>") else [text]
    content = []
    for token in filter(None, tokens):
        top = {token: 0.0}
        if token == "3":
            top = {"3": math.log(0.5), "4": math.log(0.5)}
        content.append({"token": token, "logprob": top[token], "bytes": list(token.encode()),
                        "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())}
                                         for t, lp in top.items()]})
    return {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
            "logprobs": {"content": content} if logprobs else None}


class Server(ThreadingHTTPServer):
    """Serves ``/v1/models`` and ``/v1/chat/completions``; ``behave(n, body)`` picks the n-th completion's fate:
    a status code, "ok", "nologprobs", "hang", "malformed", or "die" (close the socket without an answer)."""

    daemon_threads = True

    def __init__(self, behave, owned_by="fake"):
        super().__init__(("127.0.0.1", 0), Handler)
        self.behave, self.owned_by = behave, owned_by
        self.calls, self.bodies, self.headers_seen = 0, [], []
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def stop(self):
        self.shutdown()
        self.server_close()


def readout_tokens(text: str) -> list[int]:
    """The fake tokenizer: digits are 100-109, level words 200-204 (300-304 after a space), a space 32."""
    word = text.strip()
    if word.isdigit():
        return [32] * (text != word) + [100 + int(word)]
    return [(300 if text != word else 200) + LEVELS.index(word)]


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, status: int, payload: bytes, kind="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self):
        models = {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": self.server.owned_by,
                                              "created": 0}]}
        self._send(200, json.dumps(models).encode())

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/tokenize":  # a digit, or a chat rendered by a template that opens no <think>
            chat = [ord(c) for c in "<|im_start|>assistant\n"]
            tokens = readout_tokens(body["prompt"]) if "prompt" in body else chat
            self._send(200, json.dumps({"tokens": tokens}).encode())
            return
        if self.path == "/detokenize":
            self._send(200, json.dumps({"prompt": "".join(chr(t) for t in body["tokens"])}).encode())
            return
        with self.server.lock:
            self.server.calls += 1
            number = self.server.calls
            self.server.bodies.append(body)
            self.server.headers_seen.append({k.lower(): v for k, v in self.headers.items()})
        fate = self.server.behave(number, body)
        if fate == "hang":
            time.sleep(30)
            return
        if fate == "die":
            self.close_connection = True
            self.connection.close()
            return
        if fate == "malformed":
            self._send(200, b'{"id": "x", "choices": [')
            return
        if isinstance(fate, int):
            self._send(fate, json.dumps({"error": {"message": f"status {fate} on cue"}}).encode())
            return
        messages = body["messages"]
        thinking = "<think>" in messages[-1]["content"][-1]["text"] if messages[-1]["role"] == "user" else False
        continued = messages[-1]["role"] == "assistant"
        text = ANSWER if thinking else "3.50</answer>" if continued else "<answer>3.50</answer>"
        completion = {"id": f"c{number}", "object": "chat.completion", "created": 0, "model": MODEL,
                      "choices": [choice(text, logprobs=fate != "nologprobs")],
                      "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        self._send(200, json.dumps(completion).encode())


@pytest.fixture
def serve():
    servers = []

    def start(behave=lambda n, body: "ok", **options):
        server = Server(behave, **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        if server.socket.fileno() != -1:
            server.stop()


def scorer(server, **options):
    settings = {"timeout": 2.0, "max_retries": 2, **options}
    return Scorer(MODEL, backend="openai", profile="qponder", base_url=server.url, batch_size=8, **settings)


def images(count: int):
    return [Image.new("RGB", (64 + i, 48), (i * 20 % 255, 90, 160)) for i in range(count)]


def test_scores_from_log_probabilities_and_sends_the_image(serve):
    server = serve()
    with scorer(server) as s:
        [result] = s.assess_batch(images(1))
    # E[first digit] = 0.5*3 + 0.5*4 = 3.5, plus the tenths digit 5 with p=1: 4.0; the text says 3.50.
    assert (result.status, result.method, result.score, result.text_score) == ("ok", "probability", 4.0, 3.5)
    assert result.reasoning == "Sharp and clean."
    [message] = [m for m in server.bodies[0]["messages"] if m["role"] == "user"]
    assert message["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert server.bodies[0]["logprobs"] is True and server.bodies[0]["temperature"] == 0.0


def test_no_log_probabilities_fall_back_to_the_text_score(serve):
    server = serve(lambda n, body: "nologprobs")
    with scorer(server) as s:
        [result] = s.assess_batch(images(1))
    assert (result.status, result.method, result.score) == ("ok", "text", 3.5)


def test_generic_server_writes_the_answer_prefix_itself(serve):
    """No continue_final_message: the no-think budget grows so the model can write the tag, and the row reads the
    same as a continued one."""
    server = serve()
    with scorer(server) as s:
        [result] = s.assess_batch(images(1), think=False)
    body = server.bodies[0]
    assert "continue_final_message" not in body and "chat_template_kwargs" not in body
    assert body["messages"][-1]["role"] == "user"
    assert body["max_tokens"] > 3 and result.status == "ok" and result.raw == "<answer>3.50</answer>"
    assert result.score == 4.0


def test_vllm_server_gets_exact_readout_ids_and_continues_the_prefix(serve):
    """The single-token digits and level words (" 3" is two tokens here, so only "3" counts)."""
    server = serve(owned_by="vllm")
    readout = [*range(100, 110), *range(200, 205), *range(300, 305)]
    with scorer(server) as s:
        assert s.backend.readout_ids == readout
        s.assess_batch(images(1), think=False)
    body = server.bodies[0]
    assert body["logprob_token_ids"] == readout
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["messages"][-1] == {"role": "assistant", "content": "<answer>"} and body["max_tokens"] == 3
    assert body["chat_template_kwargs"] == {"enable_thinking": False}  # a Qwen3.5 template writes no reasoning


def test_one_failing_request_leaves_the_rest_of_the_batch(serve):
    server = serve(lambda n, body: 400 if n % 3 == 0 else "ok")
    with scorer(server) as s:
        results = s.assess_batch(images(9))
    failed = [r for r in results if r.status != "ok"]
    assert len(failed) == 3 and all(r.status == "backend_error" and "400" in r.error for r in failed)
    assert all(r.score == 4.0 for r in results if r.status == "ok")


def test_transient_errors_are_retried(serve):
    server = serve(lambda n, body: {1: 500, 2: 429}.get(n, "ok"))
    with scorer(server) as s:
        [result] = s.assess_batch(images(1))
    assert result.status == "ok" and server.calls == 3


@pytest.mark.parametrize("fate, message", [(500, "500"), ("hang", "timed out"), ("malformed", ""),
                                           ("die", "connection")])
def test_faults_become_backend_errors_in_bounded_time(serve, fate, message):
    server = serve(lambda n, body: fate)
    started = time.monotonic()
    with scorer(server, timeout=1.0, max_retries=1) as s:
        results = s.assess_batch(images(4))
    elapsed = time.monotonic() - started
    assert [r.status for r in results] == ["backend_error"] * 4
    assert all(message in r.error.lower() for r in results), results[0].error
    # 4 requests in flight at once, each at most 2 attempts of <= 1 s plus the client's backoff (< 1 s).
    assert elapsed < 6, elapsed


def test_server_dying_mid_run(serve):
    """The server answers 5 requests, then goes away for good while the 6th is in flight: the first 5 are scored,
    the other 7 fail (connection refused after the retries), and the run ends."""
    server = serve()

    def behave(n, body):
        if n <= 5:
            return "ok"
        if n == 6:
            threading.Thread(target=server.stop).start()
        return "die"

    server.behave = behave
    started = time.monotonic()
    with scorer(server, concurrency=1, timeout=1.0, max_retries=1) as s:
        results = s.assess_batch(images(12))
    elapsed = time.monotonic() - started
    assert [r.status for r in results] == ["ok"] * 5 + ["backend_error"] * 7
    assert all("connection" in r.error.lower() for r in results[5:]), results[5].error
    assert elapsed < 30, elapsed


def test_the_api_key_is_sent_but_never_logged(serve, monkeypatch, caplog):
    monkeypatch.setenv("QPONDER_TEST_KEY", SECRET)
    server = serve(lambda n, body: 401)
    caplog.set_level(logging.DEBUG)
    with scorer(server, api_key_env="QPONDER_TEST_KEY", max_retries=0) as s:
        [result] = s.assess_batch(images(1))
        shown = repr(s) + repr(vars(s.backend))
    assert server.headers_seen[0]["authorization"] == f"Bearer {SECRET}"
    assert result.status == "backend_error" and "401" in result.error and SECRET not in result.error
    assert SECRET not in caplog.text and SECRET not in shown


def test_usage_errors(serve, monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(BackendError, match="--base-url"):
        Scorer(MODEL, backend="openai")
    with pytest.raises(BackendError, match="does not serve 'other'"):
        Scorer("other", backend="openai", base_url=serve().url)
    with pytest.raises(BackendError, match="cannot reach"):
        Scorer(MODEL, backend="openai", base_url="http://127.0.0.1:9/v1", timeout=1.0, max_retries=0)


def test_command_line_through_a_server(serve, tmp_path):
    from click.testing import CliRunner

    from qponder_plugin.cli import build

    server = serve()
    for i, image in enumerate(images(3)):
        image.save(tmp_path / f"{i}.png")
    common = ["--backend", "openai", "--base-url", server.url, "-m", MODEL, "-o", "timeout=2", "-o", "max_retries=0"]
    assessed = CliRunner().invoke(build(), ["assess", str(tmp_path / "0.png"), "--profile", "qponder", "--json",
                                            *common])
    assert assessed.exit_code == 0, assessed.output
    row = json.loads(assessed.stdout)
    assert (row["backend"], row["score"], row["method"]) == ("openai", 4.0, "probability")
    filtered = CliRunner().invoke(build(), ["filter", str(tmp_path), "-t", "3.9", "--keep", str(tmp_path / "good"),
                                            "--store", str(tmp_path / "store.db"), "--json", *common])
    assert filtered.exit_code == 0, filtered.output
    assert json.loads(filtered.stdout.splitlines()[-1])["kept"] == 3
    assert sorted(p.name for p in (tmp_path / "good").iterdir()) == ["0.png", "1.png", "2.png"]


@pytest.mark.parametrize("setting, message", [("timeout", "expected KEY=VALUE"), ("9x=1", "expected KEY=VALUE"),
                                              ("bogus=1", "unexpected keyword argument 'bogus'")])
def test_command_line_setting_errors(serve, setting, message):
    from click.testing import CliRunner

    from qponder_plugin.cli import build

    result = CliRunner().invoke(build(), ["assess", "x.png", "--backend", "openai", "--base-url", serve().url,
                                          "-m", MODEL, "-o", setting])
    assert result.exit_code == 2 and message in result.output, result.output
