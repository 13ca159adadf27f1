"""``rayppo chat``: the real command in a pseudo-terminal (vLLM, the default engine), and the
pieces it is made of (history, context limit, saving) on the transformers engine."""

from __future__ import annotations

import io
import json
import os
import re
import select
import subprocess
import sys
import time

import pytest

from pipeline.data.chat_history import ChatHistory
from pipeline.infra.terminal import TerminalChat, printable
from pipeline.stages.chat import ChatApp
from rollout_workers.chat_engine import ChatSampling, HFChatEngine

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Terminal:
    """A process on a pseudo-terminal: what a person at a terminal sees and types."""

    def __init__(self, argv: list[str]):
        master, slave = os.openpty()
        self.proc = subprocess.Popen(argv, cwd=REPO, stdin=slave, stdout=slave, stderr=slave,
                                     start_new_session=True, env={**os.environ, "TERM": "dumb"})
        os.close(slave)
        self.fd = master
        self.screen = ""

    def expect(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        start = len(self.screen)
        while True:
            match = re.compile(pattern, re.S).search(self.screen, start)
            if match:
                return match
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None and not select.select([self.fd], [], [], 0)[0]:
                raise AssertionError(f"never saw {pattern!r}; the screen ends with:\n{self.screen[-2000:]}")
            if select.select([self.fd], [], [], min(left, 1.0))[0]:
                try:
                    self.screen += os.read(self.fd, 4096).decode("utf-8", "replace")
                except OSError:  # the other side closed
                    pass

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        os.close(self.fd)


def _reply(term: Terminal, typed: str) -> str:
    term.type(typed + "\n")
    match = term.expect(r"assistant> (.*?)\r?\nyou> ", timeout=120)
    return match.group(1).replace("\r\n", "\n")  # the terminal turns a reply's newlines into CR LF


@pytest.mark.integration
@pytest.mark.timeout(900)  # its waits below add up to more than the default 600 s
def test_chat_in_a_terminal_answers_and_keeps_the_history(tiny_model, tmp_path):
    saved, cleared = tmp_path / "chat.json", tmp_path / "cleared.json"
    term = Terminal([sys.executable, "-m", "pipeline.cli", "chat", tiny_model, "--max-tokens", "8",
                     "--temperature", "0.8", "--system", "You are terse."])
    try:
        term.expect(r"you> ", timeout=240)  # vLLM has loaded the model
        first = _reply(term, "hello there")
        second = _reply(term, "tell me more")
        term.type(f"/save {saved}\n")
        term.expect(r"saved 5 messages", timeout=30)
        term.type("/reset\n")
        term.expect(r"conversation cleared", timeout=30)
        term.type(f"/save {cleared}\n")
        term.expect(r"saved 1 messages", timeout=30)
        term.type("\x04")  # Ctrl-D ends the session
        assert term.proc.wait(timeout=60) == 0
    finally:
        term.close()
    messages = json.loads(saved.read_text())["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert messages[0]["content"] == "You are terse."
    assert [messages[1]["content"], messages[3]["content"]] == ["hello there", "tell me more"]
    # What the terminal showed is what the history holds (control characters are masked on screen).
    assert [printable(messages[2]["content"]).strip(), printable(messages[4]["content"]).strip()] == \
           [first.strip(), second.strip()]
    assert messages[2]["content"] and messages[4]["content"]
    assert json.loads(cleared.read_text())["messages"] == [{"role": "system", "content": "You are terse."}]


def test_bad_model_path_fails_before_loading(tmp_path):
    (tmp_path / "empty").mkdir()
    for path, words in ((str(tmp_path / "missing"), "does not exist"),
                        (str(tmp_path / "empty"), "not a model directory, an export or a checkpoint")):
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "chat", path], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and words in proc.stderr
        assert time.monotonic() - start < 30


def test_checkpoint_paths_resolve_to_their_policy(tiny_model, tmp_path):
    from pipeline.infra.model_path import resolve_model_path

    step = tmp_path / "checkpoints" / "step_000002"
    step.mkdir(parents=True)
    os.symlink(tiny_model, step / "policy")
    os.symlink(step, tmp_path / "checkpoints" / "latest")
    for given in (step, tmp_path / "checkpoints" / "latest", tmp_path / "checkpoints"):
        assert os.path.realpath(resolve_model_path(str(given))) == os.path.realpath(tiny_model)
    assert resolve_model_path(tiny_model) == os.path.normpath(tiny_model)
    assert resolve_model_path("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"  # a hub id stays one


@pytest.fixture(scope="module")
def hf_engine(tiny_model):
    return HFChatEngine(tiny_model)


def test_the_next_reply_is_generated_from_the_whole_history(hf_engine, tmp_path):
    """Greedy replies through the app equal greedy generation on the full conversation."""
    import torch

    out = io.StringIO()
    console = TerminalChat(stdin=io.StringIO("first question\nsecond question\n/save "
                                             f"{tmp_path / 'log.jsonl'}\n/save {tmp_path / 'log.jsonl'}\n"),
                           stdout=out)
    app = ChatApp(hf_engine, console, ChatSampling(temperature=0.0, max_tokens=6), system="sys")
    app.run()
    messages = app.conversation.messages
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    ids = torch.tensor([hf_engine.encode(messages[:4])])
    with torch.no_grad():
        greedy = hf_engine.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                                          do_sample=False, pad_token_id=hf_engine.tokenizer.pad_token_id)
    expected = hf_engine.tokenizer.decode(greedy[0, ids.shape[1]:], skip_special_tokens=True)
    assert messages[4]["content"] == expected
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["messages"] == messages  # .jsonl appends


def test_context_limit_drops_whole_old_exchanges():
    conversation = ChatHistory("system")
    for i in range(4):
        conversation.add("user", f"q{i}")
        conversation.add("assistant", f"a{i}")
    conversation.add("user", "last")
    dropped = conversation.fit(lambda messages: 10 * len(messages), budget=40)
    assert dropped == 6
    assert [m["content"] for m in conversation.messages] == ["system", "q3", "a3", "last"]
    with pytest.raises(ValueError, match="longer than"):
        conversation.fit(lambda messages: 100, budget=40)


def test_commands_and_control_characters():
    out = io.StringIO()
    console = TerminalChat(stdin=io.StringIO("/system be kind\n/nope\n/help\n/quit\nnever read\n"), stdout=out)
    app = ChatApp(engine=None, console=console, sampling=ChatSampling())
    app.run()
    text = out.getvalue()
    assert "system message set: be kind" in text and "unknown command /nope" in text and "/reset" in text
    assert app.conversation.system == "be kind" and app.conversation.turns == []
    assert printable("a\x1b[2Jb\n\tc") == "a\ufffd[2Jb\n\tc"
    with pytest.raises(ValueError, match="--top-p"):
        ChatSampling(top_p=0).check()


def test_a_failed_reply_withdraws_the_question_and_the_session_goes_on():
    class Broken:
        max_context = 100

        def encode(self, messages):
            return [1] * len(messages)

        def stream(self, messages, sampling, seed):
            raise RuntimeError("engine died")
            yield  # a generator, like the real engines

    out = io.StringIO()
    app = ChatApp(Broken(), TerminalChat(stdin=io.StringIO("hello\n"), stdout=out), ChatSampling(max_tokens=10))
    app.run()
    assert "the model could not reply: engine died" in out.getvalue() and app.conversation.turns == []
