"""Chat engines: a conversation in, a stream of reply text out. :class:`VLLMChatEngine` (the
default) and :class:`HFChatEngine` (the transformers fallback) serve ``rayppo chat`` and the
feedback app's live-chat task."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

from pipeline.data import token_ids
from pipeline.infra.model_path import resolve_model_path

ENGINES = ("vllm", "hf")


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

        from rollout_workers.vllm_engine import configure_cpu_environment  # imports torch

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
