"""``rayppo chat MODEL_OR_CHECKPOINT``: talk to a model in the terminal, tokens streamed.

Three parts, each usable alone:

* chat engines (:class:`VLLMChatEngine`, the default, and :class:`HFChatEngine`, the
  transformers fallback) turn a conversation into a stream of reply text. The feedback app's
  live-chat task serves its model through the same classes;
* :class:`Conversation` holds the messages and drops the oldest turns when the context is full;
* :class:`TerminalChat` is the terminal I/O (read a line, show a streamed reply). A dialogue
  environment whose user is a person types through it too.

:class:`ChatApp` joins them with the slash commands ``/reset``, ``/system TEXT``,
``/save FILE``, ``/help`` and ``/quit``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, TextIO

from pipeline.model_path import resolve_model_path
from pipeline.data import token_ids

ENGINES = ("vllm", "hf")
# Control characters a model may emit (escape sequences could rewrite the terminal); the
# history keeps the text as generated, only the screen gets the replacement character.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    return _CONTROL.sub("\ufffd", text)


@dataclass
class ChatSampling:
    """Sampling settings of one reply."""

    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int = 0
    """Reply ``k`` of a session is sampled with seed ``seed + k``: a session replays exactly."""

    def check(self) -> "ChatSampling":
        if not self.temperature >= 0:
            raise ValueError(f"--temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"--max-tokens must be >= 1, got {self.max_tokens}")
        return self



class _ChatEngineBase:
    """Rendering and locking shared by the engines. One reply is generated at a time: the lock
    lets several threads (the feedback server's request handlers) share one engine."""

    tokenizer = None
    max_context: int = 0

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def encode(self, messages: list[dict]) -> list[int]:
        """Token ids of ``messages`` rendered with the chat template, ending with the prompt of
        the assistant's next turn."""
        return token_ids(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))

    def stream(self, messages: list[dict], sampling: ChatSampling, seed: int) -> Iterator[str]:
        """The reply to ``messages`` as text pieces, as they are generated. Closing the iterator
        early (``KeyboardInterrupt``, a client gone) stops the generation."""
        prompt_ids = self.encode(messages)
        with self.lock:
            yield from self._stream_ids(prompt_ids, sampling, seed)

    def _stream_ids(self, prompt_ids: list[int], sampling: ChatSampling, seed: int) -> Iterator[str]:
        raise NotImplementedError


class HFChatEngine(_ChatEngineBase):
    """``transformers.generate`` with a text streamer, in a worker thread."""

    def __init__(self, model_path: str, *, trust_remote_code: bool = False, dtype: str = "auto",
                 max_context: Optional[int] = None):
        super().__init__()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._torch = torch
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = torch.bfloat16 if dtype == "bfloat16" or (dtype == "auto" and self.device.type == "cuda") else torch.float32
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=torch_dtype, trust_remote_code=trust_remote_code
        ).to(self.device)
        self.model.eval()
        limit = getattr(self.model.config, "max_position_embeddings", None) or 4096
        self.max_context = min(limit, max_context) if max_context else limit

    def _stream_ids(self, prompt_ids, sampling, seed):
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        torch = self._torch
        stop = threading.Event()

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        input_ids = torch.tensor([prompt_ids], device=self.device)
        sample = sampling.temperature > 0
        kwargs = dict(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0) if sample else dict(do_sample=False)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                torch.manual_seed(seed)
                with torch.no_grad():
                    self.model.generate(
                        input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=sampling.max_tokens,
                        streamer=streamer, stopping_criteria=StoppingCriteriaList([_Stop()]),
                        pad_token_id=self.tokenizer.pad_token_id, **kwargs,
                    )
            except BaseException as exc:  # surfaced in the consumer's thread below
                failure.append(exc)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        try:
            for piece in streamer:
                if piece:
                    yield piece
        finally:
            stop.set()
            worker.join()
        if failure:
            raise failure[0]


class VLLMChatEngine(_ChatEngineBase):
    """vLLM's engine stepped by hand, so each step's new text is shown as it is produced."""

    def __init__(self, model_path: str, *, trust_remote_code: bool = False, dtype: str = "auto",
                 max_context: Optional[int] = None, kv_cache_gib: float = 1.0):
        super().__init__()
        import torch

        from rollout_workers.vllm_engine import configure_cpu_environment

        on_gpu = torch.cuda.is_available()
        if not on_gpu:
            configure_cpu_environment(kv_cache_gib)
        # One in-process engine core: no extra process for a single terminal session; and
        # vLLM's start-up log stays off the conversation.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        from vllm import LLM

        if dtype == "auto":
            dtype = "bfloat16" if on_gpu else "float32"
        kwargs = dict(max_model_len=max_context) if max_context else {}
        self.llm = LLM(model=model_path, dtype=dtype, trust_remote_code=trust_remote_code,
                       enforce_eager=True, gpu_memory_utilization=0.3, disable_log_stats=True, **kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.max_context = self.llm.llm_engine.model_config.max_model_len
        self._requests = 0

    def _stream_ids(self, prompt_ids, sampling, seed):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(
            temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=sampling.max_tokens,
            seed=seed, output_kind=RequestOutputKind.DELTA, skip_special_tokens=True,
        )
        engine = self.llm.llm_engine
        self._requests += 1
        request_id = f"chat-{self._requests}"
        engine.add_request(request_id, {"prompt_token_ids": prompt_ids}, params)
        finished = False
        try:
            while not finished and engine.has_unfinished_requests():
                for output in engine.step():
                    if output.request_id != request_id:
                        continue
                    text = output.outputs[0].text if output.outputs else ""
                    if text:
                        yield text
                    finished = finished or output.finished
        finally:
            if not finished:
                engine.abort_request([request_id])


def load_engine(model: str, engine: str = "vllm", *, trust_remote_code: bool = False, dtype: str = "auto",
                max_context: Optional[int] = None, notify: Callable[[str], None] = print):
    """A chat engine for ``model`` (any path :func:`resolve_model_path` accepts). ``vllm``
    falls back to transformers, with a note, where vLLM is not installed."""
    if engine not in ENGINES:
        raise ValueError(f"--engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    path = resolve_model_path(model)
    if engine == "vllm":
        try:
            import vllm  # noqa: F401
        except ImportError:
            notify("vLLM is not installed here: using the transformers engine (--engine hf)")
            engine = "hf"
    cls = VLLMChatEngine if engine == "vllm" else HFChatEngine
    return cls(path, trust_remote_code=trust_remote_code, dtype=dtype, max_context=max_context)


class Conversation:
    """The messages of one chat: an optional system message, then alternating turns."""

    def __init__(self, system: Optional[str] = None):
        self.system = system
        self.turns: list[dict] = []

    @property
    def messages(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    def add(self, role: str, content: str) -> None:
        self.turns.append({"role": role, "content": content})

    def reset(self) -> None:
        self.turns = []

    def fit(self, count_tokens: Callable[[list[dict]], int], budget: int) -> int:
        """Drop the oldest turns until the rendered prompt has at most ``budget`` tokens; returns
        how many were dropped. The last (user) message always stays; ``ValueError`` when even
        it alone is too long."""
        dropped = 0
        while count_tokens(self.messages) > budget:
            if len(self.turns) <= 1:
                raise ValueError(f"the message alone is longer than the {budget} tokens the context leaves for it")
            # Drop a whole exchange so the turns still alternate, starting with a user message.
            cut = 2 if len(self.turns) > 2 and self.turns[1]["role"] == "assistant" else 1
            del self.turns[:cut]
            dropped += cut
        return dropped

    def save(self, path: str) -> str:
        """``{"messages": [...]}``: a conversation row. A ``.jsonl`` file gets one more line (many
        chats build a data set); any other file is written whole, atomically."""
        row = {"messages": self.messages}
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        if path.endswith(".jsonl"):
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            return path
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(row, f, ensure_ascii=False, indent=1)
        os.replace(tmp, path)
        return path


class TerminalChat:
    """Terminal I/O of a conversation: read what the person types, show replies as they stream."""

    def __init__(self, stdin: Optional[TextIO] = None, stdout: Optional[TextIO] = None,
                 user_prompt: str = "you> ", reply_prefix: str = "assistant> "):
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.user_prompt = user_prompt
        self.reply_prefix = reply_prefix

    def read_message(self) -> Optional[str]:
        """The next line typed (without its newline); ``None`` at the end of input."""
        self.stdout.write(self.user_prompt)
        self.stdout.flush()
        line = self.stdin.readline()
        if not line:
            self.stdout.write("\n")
            return None
        return line.rstrip("\r\n")

    def show_stream(self, pieces: Iterable[str]) -> str:
        """Print the reply piece by piece as it arrives; return the whole text. On Ctrl-C the
        generation stops and the part shown so far is returned."""
        self.stdout.write(self.reply_prefix)
        self.stdout.flush()
        parts: list[str] = []
        iterator = iter(pieces)
        try:
            for piece in iterator:
                parts.append(piece)
                self.stdout.write(printable(piece))
                self.stdout.flush()
        except KeyboardInterrupt:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
            self.stdout.write(" [interrupted]")
        self.stdout.write("\n")
        self.stdout.flush()
        return "".join(parts)

    def show_reply(self, text: str) -> None:
        self.show_stream([text])

    def note(self, text: str) -> None:
        self.stdout.write(f"[{text}]\n")
        self.stdout.flush()


HELP = """commands:
  /reset          forget the conversation (the system message stays)
  /system TEXT    set the system message (empty TEXT removes it)
  /save FILE      write the conversation as {"messages": [...]} (.jsonl: append a line)
  /help           this list
  /quit           leave (Ctrl-D too)"""


class ChatApp:
    """The terminal chat loop: commands, history, context limit, streamed replies."""

    def __init__(self, engine, console: TerminalChat, sampling: ChatSampling, system: Optional[str] = None):
        self.engine = engine
        self.console = console
        self.sampling = sampling
        self.conversation = Conversation(system)
        self.replies = 0

    def run(self) -> None:
        self.console.note("type a message; /help lists the commands")
        while True:
            try:
                line = self.console.read_message()
            except KeyboardInterrupt:
                line = None
            if line is None or not self.handle(line):
                return

    def handle(self, line: str) -> bool:
        """Act on one typed line; ``False`` ends the session."""
        if line.startswith("/"):
            return self.command(line)
        if not line.strip():
            return True
        self.reply(line)
        return True

    def command(self, line: str) -> bool:
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        if name in ("/quit", "/exit"):
            return False
        if name == "/reset":
            self.conversation.reset()
            self.console.note("conversation cleared")
        elif name == "/system":
            self.conversation.system = arg or None
            self.console.note(f"system message set: {arg}" if arg else "system message removed")
        elif name == "/save":
            if not arg:
                self.console.note("usage: /save FILE")
            else:
                try:
                    path = self.conversation.save(arg)
                    self.console.note(f"saved {len(self.conversation.messages)} messages to {path}")
                except OSError as exc:
                    self.console.note(f"cannot save to {arg}: {exc.strerror or exc}")
        elif name == "/help":
            self.console.stdout.write(HELP + "\n")
        else:
            self.console.note(f"unknown command {name}; /help lists the commands")
        return True

    def reply(self, text: str) -> None:
        self.conversation.add("user", text)
        budget = self.engine.max_context - self.sampling.max_tokens
        try:
            dropped = self.conversation.fit(lambda m: len(self.engine.encode(m)), budget)
        except ValueError as exc:
            self.conversation.turns.pop()
            self.console.note(str(exc))
            return
        if dropped:
            self.console.note(f"context full: dropped the {dropped} oldest messages")
        pieces = self.engine.stream(self.conversation.messages, self.sampling, self.sampling.seed + self.replies)
        self.replies += 1
        try:
            reply = self.console.show_stream(pieces)
        except Exception as exc:  # the session survives a failed reply; the question is withdrawn
            self.conversation.turns.pop()
            self.console.note(f"the model could not reply: {exc}")
            return
        self.conversation.add("assistant", reply)


# -------------------------------------------------------------------------------- CLI


def add_arguments(parser) -> None:
    parser.add_argument("model", help="model directory, export, checkpoint (runs/x/checkpoints/latest) or hub id")
    parser.add_argument("--engine", choices=ENGINES, default="vllm", help="vllm (default) or hf (transformers)")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature; 0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    parser.add_argument("--max-tokens", type=int, default=256, help="most tokens per reply")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first reply (reply k uses seed + k)")
    parser.add_argument("--system", default=None, help="system message to start with")
    parser.add_argument("--max-context", type=int, default=None,
                        help="context length in tokens (default: the model's); older turns are dropped beyond it")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow model code shipped with the model")


def run(args) -> None:
    """``rayppo chat``: check the arguments and the path, load the engine, chat until EOF."""
    sampling = ChatSampling(args.temperature, args.top_p, args.max_tokens, args.seed).check()
    console = TerminalChat()
    engine = load_engine(args.model, args.engine, trust_remote_code=args.trust_remote_code, dtype=args.dtype,
                         max_context=args.max_context, notify=console.note)
    if engine.max_context <= sampling.max_tokens:
        raise ValueError(f"--max-tokens={sampling.max_tokens} leaves no room in the {engine.max_context}-token context")
    ChatApp(engine, console, sampling, args.system).run()
