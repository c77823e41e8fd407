"""The VLM judge reward against a scripted OpenAI-compatible server on 127.0.0.1, and on a tiny random Qwen2.5-VL.

The server answers each POST with the next scripted reply (status, JSON payload or raw bytes, optional delay) and
records what it received, so every test also checks how many requests were made and what they carried.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest
import torch
from PIL import Image

from firered_core.rewards import (ChatClient, JudgeConfig, JudgeError, JudgeUnreachable, RatingScale,
                                  TransformersJudge, judge_scores, parse_rating)

# ---------------------------------------------------------------------------------------------------------------
# The scripted server
# ---------------------------------------------------------------------------------------------------------------


class _Judge(BaseHTTPRequestHandler):
    script: list = []  # (status, payload, delay_s) per request, consumed in order
    requests: list = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, body, self.headers.get("Authorization")))
        status, payload, delay = type(self).script.pop(0)
        time.sleep(delay)
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("Location", payload.decode())
                data = b""
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
            pass

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    httpd.daemon_threads = True
    _Judge.script, _Judge.requests = [], []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(endpoint: str, **overrides) -> JudgeConfig:
    settings = dict(endpoint=endpoint, model="judge", timeout_s=0.3, retries=2, backoff_s=0.01)
    return JudgeConfig(**{**settings, **overrides})


def _text(content: str, logprobs: list | None = None) -> tuple[int, dict, float]:
    choice: dict = {"message": {"role": "assistant", "content": content}}
    if logprobs is not None:
        choice["logprobs"] = {"content": logprobs}
    return 200, {"choices": [choice]}, 0.0


def _tok(token: str, top: dict[str, float]) -> dict:
    return {"token": token, "logprob": top.get(token, -1.0),
            "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top.items()]}


def _logprob_answer(top: dict[str, float], after: dict[str, float] | None = None) -> tuple[int, dict, float]:
    """'Looks good. Rating: <best>' with the candidates ``top`` at the rating (a '2' earlier must be ignored)."""
    best = max(top, key=top.get)
    tokens = [_tok("2", {"2": 0.0}), _tok(" looks good. Rating:", {" looks good. Rating:": 0.0}),
              _tok(" ", {" ": 0.0}), _tok(best, top)]
    if after is not None:
        tokens.append(_tok(max(after, key=after.get), after))
    return _text("".join(t["token"] for t in tokens), tokens)


def _images() -> tuple[list[list[Image.Image]], list[Image.Image]]:
    return [[Image.new("RGB", (1024, 512), "red")]], [Image.new("RGB", (64, 64), "blue")]


# ---------------------------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------------------------


def test_logprobs_give_the_expected_rating(server: str) -> None:
    top = {"7": math.log(0.5), "8": math.log(0.25), "3": math.log(0.05), "x": math.log(0.2)}
    _Judge.script = [_logprob_answer(top)]
    sources, results = _images()
    score, = judge_scores(sources, results, ["make it blue"], _config(server, api_key="k"))
    expected = (7 * 0.5 + 8 * 0.25 + 3 * 0.05) / (0.5 + 0.25 + 0.05)  # renormalised over the rating tokens
    assert score == pytest.approx(expected / 10)
    (path, body, auth), = _Judge.requests
    assert path == "/v1/chat/completions" and auth == "Bearer k"
    assert body["model"] == "judge" and body["logprobs"] is True and body["top_logprobs"] == 20
    content = body["messages"][0]["content"]
    assert "make it blue" in content[0]["text"]
    urls = [c["image_url"]["url"] for c in content[1:]]
    assert len(urls) == 2 and all(u.startswith("data:image/png;base64,") for u in urls)


def test_two_token_ten_splits_the_mass_of_one(server: str) -> None:
    top = {"1": math.log(0.6), "9": math.log(0.4)}
    after = {"0": math.log(0.75), "\n": math.log(0.25)}
    _Judge.script = [_logprob_answer(top, after)]
    score, = judge_scores(*_images(), ["x"], _config(server))
    assert score == pytest.approx((10 * 0.6 * 0.75 + 1 * 0.6 * 0.25 + 9 * 0.4) / 10)


def test_text_only_answer_is_parsed(server: str, caplog) -> None:
    _Judge.script = [_text("The colour changed. Rating: 6")]
    score, = judge_scores(*_images(), ["x"], _config(server))
    assert score == pytest.approx(0.6)
    assert "no logprobs" in caplog.text


def test_k_passes_are_averaged_over_a_batch(server: str) -> None:
    _Judge.script = [_text("Rating: 2"), _text("Rating: 4"), _text("Rating: **10**"), _text("rating = 9")]
    scores = judge_scores([[Image.new("RGB", (8, 8))]] * 2, [Image.new("RGB", (8, 8))] * 2, ["a", "b"],
                          _config(server, passes=2))
    assert scores == pytest.approx([0.3, 0.95])
    assert len(_Judge.requests) == 4


# ---------------------------------------------------------------------------------------------------------------
# Failures
# ---------------------------------------------------------------------------------------------------------------


def test_unreachable_endpoint_is_named_after_the_retries() -> None:
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    start = time.monotonic()
    with pytest.raises(JudgeUnreachable, match=r"127\.0\.0\.1.*/v1/chat/completions could not be reached after "
                                               r"3 tries"):
        judge_scores(*_images(), ["x"], _config(url))
    assert time.monotonic() - start < 2


def test_slow_server_times_out_after_every_try(server: str) -> None:
    _Judge.script = [(200, {}, 0.5)] * 2
    with pytest.raises(JudgeUnreachable, match=r"timed out after 2 tries \(0\.2 s each\)"):
        judge_scores(*_images(), ["x"], _config(server, timeout_s=0.2, retries=1))
    assert len(_Judge.requests) == 2


@pytest.mark.parametrize("reply, message", [
    ((200, b"<html>", 0.0), "did not answer with JSON"),
    ((200, {"error": "none"}, 0.0), "not a chat completion"),
    (_text("Rating: 12"), r"rating 12 is outside the scale 0\.\.10"),
    (_text("I cannot judge this."), r"no rating 0\.\.10 in the answer"),
])
def test_malformed_answers_are_errors(server: str, reply, message: str) -> None:
    _Judge.script = [reply]
    with pytest.raises(JudgeError, match=message) as caught:
        judge_scores(*_images(), ["x"], _config(server))
    assert "/v1/chat/completions" in str(caught.value)
    assert len(_Judge.requests) == 1  # an answer, even a bad one, is not retried


def test_server_errors_are_retried_client_errors_are_not(server: str) -> None:
    _Judge.script = [(500, {"error": {"message": "overloaded"}}, 0.0), (429, {}, 0.0), _text("Rating: 5")]
    assert judge_scores(*_images(), ["x"], _config(server)) == [pytest.approx(0.5)]
    assert len(_Judge.requests) == 3
    _Judge.script, _Judge.requests = [(400, {"error": {"message": "unknown model judge"}}, 0.0)], []
    with pytest.raises(JudgeError, match="HTTP 400: unknown model judge"):
        judge_scores(*_images(), ["x"], _config(server))
    assert len(_Judge.requests) == 1


def test_persistent_server_error_names_the_status(server: str) -> None:
    _Judge.script = [(503, b"busy", 0.0)] * 3
    with pytest.raises(JudgeError, match=r"HTTP 503: busy \(after 3 tries\)"):
        judge_scores(*_images(), ["x"], _config(server))


def test_redirects_are_not_followed(server: str) -> None:
    """A redirect would carry the pictures and the key to a URL nobody configured: it is an error, and the
    server sees exactly one request (a followed redirect would be a second one, with the key)."""
    for status in (302, 307):
        _Judge.script, _Judge.requests = [(status, f"{server}/collect".encode(), 0)], []
        client = ChatClient(server, api_key="secret", timeout_s=1, retries=2, backoff_s=0.01)
        with pytest.raises(JudgeError, match=f"HTTP {status}: redirects to .*/collect, which is not followed"):
            client.complete({"messages": []})
        assert [path for path, _, _ in _Judge.requests] == ["/v1/chat/completions"]


def test_bad_settings_name_the_argument() -> None:
    for bad, word in (({"passes": 0}, "passes"), ({"rating_low": 5, "rating_high": 5}, "scale"),
                      ({"top_logprobs": 50}, "top_logprobs")):
        with pytest.raises(ValueError, match=word):
            JudgeConfig(**bad)
    with pytest.raises(ValueError, match="http"):
        ChatClient("file:///etc/passwd")
    assert parse_rating("Rating: 3.5", RatingScale()) == 3.5 and parse_rating("7", RatingScale(1, 9)) == 7


# ---------------------------------------------------------------------------------------------------------------
# The local back-end, on a tiny random Qwen2.5-VL
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local() -> tuple:
    pytest.importorskip("transformers")
    from firered_core.encoder.qwen_processor import build_qwen_vl_processor
    from tests.encoder_fixtures import build_tiny_qwen_vl, offline_tokenizer

    return build_tiny_qwen_vl(), build_qwen_vl_processor(offline_tokenizer())


def _next_token_logits(model, processor, text: str, images: list[Image.Image]) -> torch.Tensor:
    with torch.no_grad():
        return model(**processor(text=[text], images=images)).logits[0, -1]


@pytest.mark.parametrize("high", [9, 10])
def test_local_judge_is_the_softmax_weighted_mean_of_the_rating_logits(local, high: int) -> None:
    model, processor = local
    config = JudgeConfig(rating_high=high)
    source, result = Image.new("RGB", (56, 56), "red"), Image.new("RGB", (56, 84), "blue")
    score, = judge_scores([[source]], [result], ["make it blue"], config,
                          judge=TransformersJudge(model, processor, config))

    text = ("<|im_start|>user\n" + "<|vision_start|><|image_pad|><|vision_end|>" * 2
            + config.prompt("make it blue", 1) + "<|im_end|>\n<|im_start|>assistant\nRating: ")
    digits = [processor.tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]
    p = torch.softmax(_next_token_logits(model, processor, text, [source, result])[digits], dim=0)  # [10]
    ratings = torch.arange(10, dtype=torch.float64)
    if high == 9:
        expected = float((p.double() * ratings).sum()) / 9
    else:  # "10" is "1" then "0": p(10) = p("1") p("0" | "1"), the rest of p("1") stays with 1
        after = torch.softmax(_next_token_logits(model, processor, text + "1", [source, result]).double(), dim=0)
        p_all = torch.softmax(_next_token_logits(model, processor, text, [source, result]).double(), dim=0)
        masses = p_all[digits].clone()
        p10 = masses[1] * after[digits[0]]
        masses[1] -= p10
        expected = float(((masses * ratings).sum() + 10 * p10) / (masses.sum() + p10)) / 10
    assert score == pytest.approx(expected, abs=1e-6)
    assert 0.0 <= score <= 1.0


@pytest.fixture(scope="module")
def saved_judge(local, tmp_path_factory: pytest.TempPathFactory):
    """The tiny Qwen2.5-VL saved as transformers saves a model folder: config, safetensors, tokenizer, processor."""
    from tests.encoder_fixtures import save_tiny_qwen_vl_folder

    return save_tiny_qwen_vl_folder(tmp_path_factory.mktemp("judge") / "qwen-vl-judge")


def test_a_saved_judge_folder_rates_as_the_model_in_memory(local, saved_judge) -> None:
    from firered_core.rewards import load_local_judge

    model, processor = local
    config = JudgeConfig()
    source, result = Image.new("RGB", (56, 56), "red"), Image.new("RGB", (56, 84), "blue")
    expected = TransformersJudge(model, processor, config).score([source], result, "make it blue")
    loaded = load_local_judge(saved_judge, config)
    assert loaded.score([source], result, "make it blue") == pytest.approx(expected, abs=1e-6)
    assert not loaded.model.training


def test_a_judge_folder_with_a_missing_part_is_refused_naming_it(saved_judge, tmp_path) -> None:
    import shutil

    from firered_core.rewards import load_local_judge

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_local_judge(tmp_path / "nowhere")
    pickled = tmp_path / "pickled"
    shutil.copytree(saved_judge, pickled)
    for weights in pickled.glob("*.safetensors"):
        weights.rename(weights.with_name("pytorch_model.bin"))  # what an old checkpoint ships: never unpickled
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors weights \(pytorch_model\.bin are pickled"):
        load_local_judge(pickled)
    no_tokenizer = tmp_path / "no_tokenizer"
    shutil.copytree(saved_judge, no_tokenizer)
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        (no_tokenizer / name).unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match="needs its tokenizer"):
        load_local_judge(no_tokenizer)
    no_config = tmp_path / "no_config"
    shutil.copytree(saved_judge, no_config)
    (no_config / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="needs config.json"):
        load_local_judge(no_config)
