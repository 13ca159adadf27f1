"""``rayppo chat MODEL_OR_CHECKPOINT``: talk to a model in the terminal, tokens streamed.

Three parts, each usable alone: a chat engine (:mod:`rollout_workers.chat_engine`) turns a
conversation into a stream of reply text; :class:`pipeline.data.chat_history.ChatHistory`
holds the messages and drops the oldest turns when the context is full;
:class:`pipeline.infra.terminal.TerminalChat` is the terminal I/O.

:class:`ChatApp` joins them with the slash commands ``/reset``, ``/system TEXT``,
``/save FILE``, ``/help`` and ``/quit``.
"""

from __future__ import annotations

from typing import Optional

from pipeline.data.chat_history import ChatHistory
from pipeline.infra.terminal import TerminalChat
from rollout_workers.chat_engine import ENGINES, ChatSampling, load_engine

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
        self.conversation = ChatHistory(system)
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
