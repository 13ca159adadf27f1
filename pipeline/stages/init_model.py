"""Small models and tokenizers built locally, so a run needs no model hub.

By default the tokenizer is a byte-level BPE trained on the task text itself, with every digit
its own token: arithmetic is far easier to learn when "123" is always "1", "2", "3" rather than
whatever chunks BPE happened to merge. The chat format is ChatML, as in Qwen2, so the same prompt
code works for these models and for real Qwen checkpoints.

With ``init.tokenizer_path`` the model is built around a real family's tokenizer and chat
template instead (Qwen3, Llama-3.1, Gemma-3: :mod:`pipeline.infra.tokenizer_families`), in the
family's own architecture and at its full vocabulary size; only the weights are random.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import torch
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from pipeline import data, tasks
from pipeline.data.templates import check_chat_template
from pipeline.infra.tokenizer_families import family_of, resolve_tokenizer_path

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_COMMON = dict(tie_word_embeddings=True, max_position_embeddings=512, rope_theta=10000.0)
PRESETS: dict[str, dict] = {
    "tiny": dict(
        num_hidden_layers=2, hidden_size=128, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=256, **_COMMON,
    ),
    "debug": dict(
        num_hidden_layers=4, hidden_size=256, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=512, **_COMMON,
    ),
    "small": dict(
        num_hidden_layers=8, hidden_size=512, num_attention_heads=8, num_key_value_heads=2,
        intermediate_size=1408, **_COMMON,
    ),
    "0.5b": dict(
        num_hidden_layers=24, hidden_size=896, num_attention_heads=14, num_key_value_heads=2,
        intermediate_size=4864, **_COMMON,
    ),
}

_ARCHITECTURES = {
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    "gemma3": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM),
}
_MIN_VOCAB = 256 + len(SPECIAL_TOKENS) + 1
_SPECIAL_SPLIT = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))


def render_chat(messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The text :data:`CHAT_TEMPLATE` renders, without needing a tokenizer."""
    text = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
    return text + f"{IM_START}assistant\n" if add_generation_prompt else text


def train_tokenizer(texts: list[str], vocab_size: int) -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with single-digit tokens and a ChatML chat template."""
    if not isinstance(vocab_size, int) or vocab_size < _MIN_VOCAB:
        raise ValueError(
            f"init.vocab_size={vocab_size!r} must be an integer >= {_MIN_VOCAB} "
            f"(256 byte tokens, {len(SPECIAL_TOKENS)} special tokens and at least one merge)"
        )
    if not texts:
        raise ValueError("model_init.train_tokenizer: no texts to train the tokenizer on")
    # The pre-tokenization is Qwen2's own (NFC, one token per digit, byte-level): transformers maps
    # any qwen2 checkpoint to Qwen2Tokenizer, which rebuilds exactly this pipeline around the saved
    # vocab and merges, so the tokenizer trained here and the one every later stage loads agree.
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Special tokens are never pre-tokenized at encode time, so their characters must not spend
    # merges during training either.
    pieces = (piece for text in texts for piece in _SPECIAL_SPLIT.split(text) if piece)
    tok.train_from_iterator(pieces, trainer=trainer)
    trained = json.loads(tok.to_str())["model"]
    tokenizer = transformers.Qwen2Tokenizer(
        vocab=trained["vocab"],
        merges=[tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in trained["merges"]],
        unk_token=None,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        extra_special_tokens=[IM_START],
        clean_up_tokenization_spaces=False,
        model_max_length=PRESETS["tiny"]["max_position_embeddings"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(architecture: str, preset: str, tokenizer, seed: int, num_layers: int | None = None) -> transformers.PreTrainedModel:
    """A randomly initialised (float32) causal LM sized by ``preset`` (``num_layers`` deep
    when given) for ``tokenizer``."""
    if architecture not in _ARCHITECTURES:
        raise ValueError(
            f"init.architecture={architecture!r} is not supported; choose one of {sorted(_ARCHITECTURES)}"
        )
    if preset not in PRESETS:
        raise ValueError(f"init.preset={preset!r} is unknown; choose one of {list(PRESETS)}")
    config_cls, model_cls = _ARCHITECTURES[architecture]
    sizes = dict(PRESETS[preset])
    if num_layers is not None:
        if num_layers < 1:
            raise ValueError(f"init.num_layers={num_layers!r} must be at least 1 (or null: the preset's depth)")
        sizes["num_hidden_layers"] = num_layers
    rope = {"rope_type": "default", "rope_theta": sizes.pop("rope_theta")}
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError("model_init.build_model: the tokenizer needs an end-of-sequence token")
    # Llama-3.1's tokenizer has no pad token; padding is always masked, so eos serves.
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    bos_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else pad_id
    head_dim = sizes["hidden_size"] // sizes["num_attention_heads"]
    if architecture == "qwen2":
        family = {"rope_parameters": rope}
    elif architecture == "gemma3":
        # Gemma-3 interleaves sliding-window and global attention layers, each with its own rope.
        family = {
            "rope_parameters": {"sliding_attention": dict(rope), "full_attention": dict(rope)},
            "head_dim": head_dim,
            "query_pre_attn_scalar": head_dim,
        }
    else:  # the configs' default head_dim is 128, whatever the width
        family = {"rope_parameters": rope, "head_dim": head_dim}
    config = config_cls(
        vocab_size=len(tokenizer),
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        dtype="float32",
        **family,
        **sizes,
    )
    torch.manual_seed(seed)
    model = model_cls(config).to(torch.float32)
    model.config.architectures = [model_cls.__name__]
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = bos_id, eos_id, pad_id
    return model


def _corpus(init_cfg, data_cfg) -> list[str]:
    size = init_cfg.corpus_size
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"init.corpus_size={size!r} must be an integer >= 1")
    task = tasks.get(data_cfg.task) if data_cfg.task is not None else None
    if task is not None and task.corpus is not None:
        chats = task.corpus(size, data_cfg.seed)
    elif task is not None:
        rows = tasks.generate_rows(
            data_cfg.task, size, data_cfg.seed, data_cfg.min_digits, data_cfg.max_digits
        )
        chats = [
            [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["answer"]}]
            for r in rows
        ]
    else:
        if not data_cfg.train_files:
            raise ValueError(
                "init-model needs text for its tokenizer: data.task is null and data.train_files is empty"
            )
        chats = []
        for path in data_cfg.train_files:
            for row in data.load_rows(
                path, data_cfg.prompt_key, data_cfg.messages_key, data_cfg.answer_key
            ):
                answer = [{"role": "assistant", "content": row.answer}] if row.answer else []
                chats.append(row.messages + answer)
                if len(chats) == size:
                    break
            if len(chats) == size:
                break
    return [render_chat(chat) for chat in chats]


def _replace_dir(tmp: str, target: str) -> None:
    """Move the finished ``tmp`` onto ``target``; ``target`` is never half-written."""
    old = target + ".old"
    if os.path.exists(old):
        shutil.rmtree(old)
    if os.path.exists(target):
        os.replace(target, old)
    os.replace(tmp, target)
    if os.path.exists(old):
        shutil.rmtree(old)


def load_family_tokenizer(tokenizer_path: str):
    """The real tokenizer ``init.tokenizer_path`` names, checked for a usable chat template."""
    path = resolve_tokenizer_path(tokenizer_path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    check_chat_template(tokenizer, f"init.tokenizer_path={tokenizer_path!r}")
    return tokenizer


def model_architecture(init_cfg) -> str:
    """``init.architecture``, else the tokenizer family's own, else qwen2."""
    if init_cfg.architecture is not None:
        return init_cfg.architecture
    family = family_of(init_cfg.tokenizer_path) if init_cfg.tokenizer_path else None
    return family.architecture if family is not None else "qwen2"


def init_model(init_cfg, data_cfg) -> str:
    """Build (or load) the tokenizer, build a random model around it, save both; return the path."""
    if init_cfg.tokenizer_path:
        tokenizer = load_family_tokenizer(init_cfg.tokenizer_path)
    else:
        tokenizer = train_tokenizer(_corpus(init_cfg, data_cfg), init_cfg.vocab_size)
    model = build_model(model_architecture(init_cfg), init_cfg.preset, tokenizer, init_cfg.seed, init_cfg.num_layers)
    out = os.path.normpath(init_cfg.output_dir)
    tmp = out + ".tmp"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    model.save_pretrained(tmp)  # transformers 5 always writes safetensors
    tokenizer.save_pretrained(tmp)
    _replace_dir(tmp, out)
    return out


def ensure_model(init_cfg, data_cfg) -> str:
    """``init_cfg.output_dir``, built first if it holds no model yet."""
    if os.path.isfile(os.path.join(init_cfg.output_dir, "config.json")):
        return os.path.normpath(init_cfg.output_dir)
    return init_model(init_cfg, data_cfg)
